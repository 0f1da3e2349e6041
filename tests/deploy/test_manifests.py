"""deploy/ renders, validates against the Kubernetes schemas and KEDA's CRD, and agrees with the
project: its commands, its settings, its Redis key names and its defaults."""

from __future__ import annotations

import copy
import importlib
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_manifests import (  # type: ignore[import-not-found]
    KUSTOMIZATIONS,
    ROOT,
    Manifest,
    container,
    environment,
    find,
    matches_selector,
    rendered,
)
from pydantic_settings import BaseSettings

from schemas import keys
from schemas.environment import variable_names
from service.config import Settings
from workers.config import WorkerSettings

KEDA_CRD = ROOT / "tests" / "fixtures" / "keda" / "scaledobjects.keda.sh.yaml"
# The oldest Kubernetes the manifests are for: the `sleep` preStop action is on from 1.30.
OLDEST_KUBERNETES = "1.30.0"
# Our images' commands and the settings each one reads.
SETTINGS_OF: dict[str, type[BaseSettings]] = {"glimpse": Settings, "glimpse-worker": WorkerSettings}
# The trigger metadata KEDA's redis-streams scaler reads (its documentation's parameter list).
REDIS_STREAMS_METADATA = {
    "address",
    "host",
    "port",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    "usernameFromEnv",
    "passwordFromEnv",
}


def kubernetes_objects(kustomization: str) -> list[Manifest]:
    return [m for m in rendered(kustomization) if not m["apiVersion"].startswith("keda.sh/")]


def scaled_object(kustomization: str) -> Manifest:
    return find(rendered(kustomization), "ScaledObject", "glimpse-worker")


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation
    does (a CRD schema alone only prunes them, which would let a misspelt field pass)."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def keda_validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = closed(version["schema"]["openAPIV3Schema"])
    # The API server checks apiVersion, kind and metadata itself; the CRD describes spec.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def setting(settings: type[BaseSettings], env: dict[str, str], name: str) -> float:
    """A numeric setting as a container gets it: its env value, else the class's default."""
    field = settings.model_fields[name]
    prefix = str(settings.model_config.get("env_prefix", ""))
    for variable in variable_names(name, field, prefix):
        if variable in env:
            return float(env[variable])
    return float(field.default)


def main_of(program: str) -> Callable[[list[str]], None]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert program in scripts, f"{program} is not a console script of this project"
    module, _, function = scripts[program].partition(":")
    main: Callable[[list[str]], None] = getattr(importlib.import_module(module), function)
    return main


def our_commands(manifests: tuple[Manifest, ...]) -> list[tuple[str, list[str], Manifest]]:
    """(workload, argv, container) of every command our images run: containers and probes."""
    found = []
    for workload in manifests:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for spec in workload["spec"]["template"]["spec"]["containers"]:
            if not spec["image"].startswith("glimpse-"):
                continue
            found.append(
                (workload["metadata"]["name"], spec["command"] + spec.get("args", []), spec)
            )
            hooks = [spec.get(p, {}) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
            hooks.append(spec.get("lifecycle", {}).get("preStop", {}))
            for hook in hooks:
                if "exec" in hook:
                    found.append((workload["metadata"]["name"], hook["exec"]["command"], spec))
    return found


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_every_object_validates_against_the_kubernetes_schemas(
    kustomization: str, version: str
) -> None:
    objects = kubernetes_objects(kustomization)
    kinds = {m["kind"] for m in objects}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert {"NetworkPolicy", "PersistentVolumeClaim", "Namespace"} <= kinds
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_scaled_object_validates_against_kedas_crd(kustomization: str) -> None:
    validator = keda_validator()
    scaler = scaled_object(kustomization)

    errors = [error.message for error in validator.iter_errors(scaler)]

    assert errors == []
    misspelt = copy.deepcopy(scaler)
    misspelt["spec"]["minReplicasCount"] = misspelt["spec"].pop("minReplicaCount")
    assert not validator.is_valid(misspelt), "the closed schema refuses an unknown field"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_scaler_follows_every_models_stream_by_its_real_names(kustomization: str) -> None:
    manifests = rendered(kustomization)
    scaler = scaled_object(kustomization)
    worker = find(manifests, "Deployment", "glimpse-worker")
    redis = find(manifests, "Service", "glimpse-redis")
    batch = setting(WorkerSettings, environment(container(worker, "worker")), "max_batch")
    model_ids = sorted(p.parent.parent.name for p in (ROOT / "models").glob("*/*/manifest.json"))
    address = (
        f"{redis['metadata']['name']}.{redis['metadata']['namespace']}.svc.cluster.local:"
        f"{redis['spec']['ports'][0]['port']}"
    )

    assert scaler["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaler["metadata"]["namespace"] == worker["metadata"]["namespace"]
    triggers = scaler["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    for trigger in triggers:
        assert set(trigger["metadata"]) <= REDIS_STREAMS_METADATA
        assert trigger["metadata"]["address"] == address
        assert trigger["metadata"]["consumerGroup"] == keys.CONSUMER_GROUP
    for model_id in model_ids:
        on_stream = [
            t["metadata"] for t in triggers if t["metadata"]["stream"] == keys.job_stream(model_id)
        ]
        # One worker more per batch of unread jobs; the busy ones kept while they hold batches.
        assert [float(m["lagCount"]) for m in on_stream if "lagCount" in m] == [batch]
        assert [
            float(m["pendingEntriesCount"]) for m in on_stream if "pendingEntriesCount" in m
        ] == [batch]
    assert {t["metadata"]["stream"] for t in triggers} == {keys.job_stream(m) for m in model_ids}
    # No second autoscaler fights KEDA's over the workers.
    hpas = [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"]
    assert all(h["spec"]["scaleTargetRef"]["name"] != "glimpse-worker" for h in hpas)


def test_the_scaler_keeps_a_worker_and_cools_down() -> None:
    spec = scaled_object("base")["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]

    # The gateway refuses (503) a model without a live worker, so the stream could never grow
    # to wake a first one: at least one stays.
    assert spec["minReplicaCount"] >= 1
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert all(p["value"] == 1 for p in behavior["scaleDown"]["policies"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_command_runs_a_console_script_that_takes_its_arguments(
    kustomization: str, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = our_commands(rendered(kustomization))

    assert {argv[0] for _, argv, _ in commands} == set(SETTINGS_OF)
    for workload, argv, _ in commands:
        program, words = argv[0], argv[1:]
        subcommands = [w for w in words if not w.startswith("-")]
        with pytest.raises(SystemExit) as exit_info:
            main_of(program)([*subcommands, "--help"])
        shown = capsys.readouterr().out
        assert exit_info.value.code == 0, f"{workload}: {argv} is not a command of {program}"
        for option in (w.partition("=")[0] for w in words if w.startswith("-")):
            assert re.search(rf"(^|\s|\[){re.escape(option)}\b", shown), f"{workload}: {option}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_variable_the_containers_set_is_a_setting_of_their_program(
    kustomization: str,
) -> None:
    for workload, _, spec in our_commands(rendered(kustomization)):
        settings = SETTINGS_OF[spec["command"][0]]
        prefix = str(settings.model_config.get("env_prefix", ""))
        known = {v for n, f in settings.model_fields.items() for v in variable_names(n, f, prefix)}
        unknown = set(environment(spec)) - known
        assert not unknown, f"{workload} sets variables {settings.__name__} never reads: {unknown}"


def test_the_gateway_is_probed_served_autoscaled_and_drained() -> None:
    manifests = rendered("base")
    gateway = find(manifests, "Deployment", "glimpse-gateway")
    spec = container(gateway, "gateway")
    env = environment(spec)
    service = find(manifests, "Service", "glimpse-gateway")
    hpa = find(manifests, "HorizontalPodAutoscaler", "glimpse-gateway")
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}

    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ports[spec["readinessProbe"]["httpGet"]["port"]] == int(env["GLIMPSE_PORT"])
    assert env["GLIMPSE_HOST"] == "0.0.0.0"
    assert service["spec"]["ports"][0]["targetPort"] in ports
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert matches_selector({"matchLabels": service["spec"]["selector"]}, labels)
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in spec["resources"]["requests"], "CPU utilisation needs a CPU request"
    drain = spec["lifecycle"]["preStop"]["sleep"]["seconds"]
    longest_wait = setting(Settings, env, "max_sync_timeout_s")
    assert (
        gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain + longest_wait
    )


def test_a_worker_finishes_its_batch_within_its_grace_period() -> None:
    worker = find(rendered("base"), "Deployment", "glimpse-worker")
    env = environment(container(worker, "worker"))
    batch_s = setting(WorkerSettings, env, "max_batch") * setting(
        WorkerSettings, env, "max_job_seconds"
    )

    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > batch_s
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_gpu_overlay_gives_each_worker_one_gpu_and_the_base_none() -> None:
    base = container(find(rendered("base"), "Deployment", "glimpse-worker"), "worker")
    gpu = container(find(rendered("overlays/gpu"), "Deployment", "glimpse-worker"), "worker")

    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert environment(gpu)["GLIMPSE_DEVICE"] == "cuda:0"
    assert "nvidia.com/gpu" not in base["resources"].get("limits", {})
    assert environment(base)["GLIMPSE_DEVICE"] == "cpu"
    # The rest of the worker is the base's.
    assert environment(gpu).keys() == environment(base).keys()
    assert gpu["command"] == base["command"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_workers_read_the_model_repository_read_only(kustomization: str) -> None:
    manifests = rendered(kustomization)
    worker = find(manifests, "Deployment", "glimpse-worker")
    spec = container(worker, "worker")
    repository = environment(spec)["GLIMPSE_MODEL_REPOSITORY"]
    (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == repository]
    (volume,) = [
        v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]

    assert mount["readOnly"] is True
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    claim = find(manifests, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_redis_keeps_an_append_only_file_on_a_persistent_volume() -> None:
    manifests = rendered("base")
    redis = find(manifests, "StatefulSet", "glimpse-redis")
    service = find(manifests, "Service", "glimpse-redis")
    spec = container(redis, "redis")
    command = spec["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))

    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert {m["name"]: m["mountPath"] for m in spec["volumeMounts"] if m["name"] in claims} == {
        "data": options["--dir"]
    }
    url = f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    for name in ("glimpse-gateway", "glimpse-worker"):
        deployment = find(manifests, "Deployment", name)
        (app,) = deployment["spec"]["template"]["spec"]["containers"]
        assert environment(app)["REDIS_URL"] == url


def test_keys_come_from_the_secrets_the_guide_says_to_create() -> None:
    manifests = rendered("base")
    guide = (ROOT / "docs" / "deployment.md").read_text()
    files = {"glimpse-gateway": ["GLIMPSE_API_KEYS_FILE", "GLIMPSE_PAYLOAD_KEY_FILE"]}
    files["glimpse-worker"] = ["GLIMPSE_PAYLOAD_KEY_FILE"]
    for name, variables in files.items():
        deployment = find(manifests, "Deployment", name)
        (app,) = deployment["spec"]["template"]["spec"]["containers"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        for variable in variables:
            path = Path(environment(app)[variable])
            (mount,) = [m for m in app["volumeMounts"] if m["mountPath"] == str(path.parent)]
            secret = volumes[mount["name"]]["secret"]["secretName"]
            command = f"kubectl -n glimpse create secret generic {secret} --from-file={path.name}="
            assert command in guide, f"{name}: {variable} needs {command!r} in the guide"


def test_only_the_gateways_workers_and_kedas_operator_reach_redis() -> None:
    manifests = rendered("base")
    (policy,) = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    redis = find(manifests, "StatefulSet", "glimpse-redis")
    pods = {
        m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"]
        for m in manifests
        if m["kind"] in ("Deployment", "StatefulSet")
    }
    (rule,) = policy["spec"]["ingress"]
    same_namespace = [p["podSelector"] for p in rule["from"] if "namespaceSelector" not in p]
    other = [p for p in rule["from"] if "namespaceSelector" in p]

    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert matches_selector(
        policy["spec"]["podSelector"], redis["spec"]["template"]["metadata"]["labels"]
    )
    admitted = {
        name
        for name, labels in pods.items()
        if any(matches_selector(s, labels) for s in same_namespace)
    }
    assert admitted == {"glimpse-gateway", "glimpse-worker"}
    assert [p["namespaceSelector"]["matchLabels"] for p in other] == [
        {"kubernetes.io/metadata.name": "keda"}
    ]
    assert [p["port"] for p in rule["ports"]] == [6379]
