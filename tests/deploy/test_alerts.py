"""The example alerting rules load in Prometheus, fire when they should, and alert only on
series the gateway exports."""

from __future__ import annotations

import re
import subprocess

import yaml
from deploy_manifests import ROOT, tool  # type: ignore[import-not-found]
from model_infos import small_model_info  # type: ignore[import-not-found]
from prometheus_client.parser import text_string_to_metric_families

from schemas import metrics
from service.metrics import HttpMetrics, ServiceSnapshot, exposition

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def exported_series() -> set[str]:
    """Every sample name a gateway's /metrics can carry, from the exposition code itself."""
    snapshot = ServiceSnapshot(
        models={"m": small_model_info("m")},
        depths={"m": 0},
        live_workers=1,
        recorded_and_events=({}, {}),
    )
    text = exposition(HttpMetrics(), snapshot).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ()))
    return names


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_fire_on_the_series_of_their_unit_tests() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_series_the_rules_name_is_exported() -> None:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    named = {name for rule in rules for name in re.findall(r"\bglimpse_[a-z_]+\b", rule["expr"])}
    exported = exported_series()

    assert len(rules) >= 8
    assert named - exported == set(), "alerts on series that nothing exports"
    # The service-wide histograms of schemas/metrics.py are among what the gateway exports.
    assert {spec.name + "_bucket" for spec in metrics.HISTOGRAMS} <= exported
    assert "glimpse_job_seconds_bucket" in named
