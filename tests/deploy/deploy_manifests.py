"""The Kubernetes manifests of deploy/ as `kubectl kustomize` renders them, and what to read
out of them."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ("base", "overlays/gpu")

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """A binary that a dev dependency installs beside this interpreter, or one on PATH."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: `make install` (or `make test`) installs it")
    return found


@functools.cache
def rendered(kustomization: str) -> tuple[Manifest, ...]:
    """Every object of a kustomization, as `kubectl kustomize` (kustomize built in) renders it."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(manifests: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: Manifest, name: str) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == name]
    assert len(matches) == 1
    found: Manifest = matches[0]
    return found


def environment(container_spec: Manifest) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in container_spec.get("env", [])}


def matches_selector(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether `labels` satisfy a label selector (matchLabels and matchExpressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True
