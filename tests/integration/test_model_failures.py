"""Broken model folders beside the demo model: the others are served, the broken ones reported."""

import base64
import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from reliability_support import wait_until  # type: ignore[import-not-found]
from torch import nn

from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis
from workers.demo.data import make_sample, to_png_bytes

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo-lesions"
# What each broken folder's failure must say, by model id.
REASONS = {
    "fixed-batch": "model.onnx does not run on a batch of 2 at the manifest's input size "
    "(is its batch axis dynamic?)",
    "misspelt-layer": "cam_layer 'featuers.14' is not a layer with a spatial output; "
    "did you mean 'features.14'?",
    "unimportable": "factory 'workers.demo.modle:build_lesion_net' cannot be imported: "
    "No module named 'workers.demo.modle'",
}


def demo_manifest(model_id: str, **overrides: object) -> dict[str, object]:
    manifest = json.loads((DEMO / "1" / "manifest.json").read_text())
    manifest.update(id=model_id, **overrides)
    return dict(manifest)


def add_demo_copy(repository: Path, model_id: str, **overrides: object) -> Path:
    """The demo model's weights under another id, with manifest fields replaced."""
    folder = repository / model_id / "1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").symlink_to(DEMO / "1" / "model.safetensors")
    (folder / "manifest.json").write_text(json.dumps(demo_manifest(model_id, **overrides)))
    return folder.parent


def add_fixed_batch_onnx(repository: Path) -> Path:
    """A tiny CNN exported to ONNX without dynamic axes: its batch axis is fixed at 1."""
    folder = repository / "fixed-batch" / "1"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, 16, 16),),
            str(folder / "model.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
        )
    manifest = {
        "id": "fixed-batch",
        "version": "1",
        "format": "onnx",
        "labels": ["a", "b", "c"],
        "input": {"channels": 1, "height": 16, "width": 16, "mean": [0.5], "std": [0.25]},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder.parent


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three broken model folders, by id, in a repository of their own."""
    repository = tmp_path_factory.mktemp("broken-models")
    return {
        "fixed-batch": add_fixed_batch_onnx(repository),
        "misspelt-layer": add_demo_copy(repository, "misspelt-layer", cam_layer="featuers.14"),
        "unimportable": add_demo_copy(
            repository,
            "unimportable",
            architecture={
                "factory": "workers.demo.modle:build_lesion_net",
                "kwargs": {"num_classes": 3, "width": 16},
            },
        ),
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, broken: dict[str, Path]) -> Path:
    """The demo model and the three broken folders."""
    repository = tmp_path_factory.mktemp("mixed-models")
    (repository / "demo-lesions").symlink_to(DEMO)
    for model_id, folder in broken.items():
        (repository / model_id).symlink_to(folder)
    return repository


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateRedis]:
    """A Redis of this module's own: the failures it publishes stay out of the other tests."""
    with PrivateRedis() as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    server: PrivateRedis, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevStack]:
    running = DevStack(
        port=free_port(),
        redis_url=server.url,
        log_dir=tmp_path_factory.mktemp("failures-logs"),
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MODEL_REPOSITORY": str(repository),
            "GLIMPSE_HEARTBEAT_S": "0.5",
        },
    )
    with running.serving():
        yield running


@pytest.fixture()
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


def image_b64() -> str:
    return base64.b64encode(to_png_bytes(make_sample(3).image)).decode()


def worker_log(stack: DevStack) -> str:
    assert stack.log_dir is not None
    return (stack.log_dir / "worker-0.log").read_text()


def test_the_demo_model_is_served_beside_the_broken_ones(client: httpx.Client) -> None:
    listed = client.get("/v1/models")

    assert listed.status_code == 200
    by_id = {model["id"]: model for model in listed.json()}
    assert sorted(by_id) == ["demo-lesions", "fixed-batch", "misspelt-layer", "unimportable"]
    assert by_id["demo-lesions"]["status"] == "ready"
    assert by_id["demo-lesions"]["live_workers"] == 1
    for model_id, reason in REASONS.items():
        entry = by_id[model_id]
        assert (entry["status"], entry["version"]) == ("failed", "1")
        assert entry["reason"].startswith(reason), entry["reason"]
        assert client.get(f"/v1/models/{model_id}").json() == entry

    explained = client.post(
        "/v1/explanations", json={"model": "demo-lesions", "image": image_b64()}
    )
    assert explained.status_code == 200, explained.text
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["live_workers"] == 1


@pytest.mark.parametrize("model_id", sorted(REASONS))
def test_a_request_for_a_broken_model_is_503_with_its_reason(
    client: httpx.Client, model_id: str
) -> None:
    requests = [
        ("/v1/explanations", {"model": model_id, "image": image_b64()}),
        ("/v1/jobs", {"model": model_id, "image": image_b64()}),
        (f"/v1/models/{model_id}/visualizations", {"target": 1, "steps": 4}),
    ]
    for path, body in requests:
        answer = client.post(path, json=body)

        assert answer.status_code == 503, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert int(answer.headers["retry-after"]) >= 1
        problem = answer.json()
        assert problem["status"] == 503
        assert f"Model {model_id!r} (version 1) failed to load: " in problem["detail"]
        assert REASONS[model_id] in problem["detail"]

    unknown = client.post("/v1/jobs", json={"model": "no-such-model", "image": image_b64()})
    assert unknown.status_code == 404


def test_the_worker_logs_one_line_per_broken_folder(stack: DevStack, repository: Path) -> None:
    lines = worker_log(stack).splitlines()

    for model_id, reason in REASONS.items():
        folder = repository / model_id / "1"
        matching = [line for line in lines if f"model folder {folder} not served: " in line]
        assert len(matching) == 1, (model_id, lines)
        assert reason in matching[0]
        if model_id == "fixed-batch":
            # ONNX Runtime's message spans lines; the log keeps it whole on the failure's line.
            assert "Got: 2 Expected: 1" in matching[0]
    assert any("loaded 1 model(s)" in line for line in lines)


def test_a_worker_serving_a_failed_model_wins_while_it_lives(
    stack: DevStack, client: httpx.Client, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"
    add_demo_copy(fixed, "misspelt-layer", cam_layer="features.14")
    second = subprocess.Popen(
        [sys.executable, "-m", "workers.cli"],
        env={**stack.child_env(), "GLIMPSE_MODEL_REPOSITORY": str(fixed)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def status() -> str:
        return str(client.get("/v1/models/misspelt-layer").json()["status"])

    try:
        assert wait_until(lambda: status() == "ready", timeout_s=120)
        entry = client.get("/v1/models/misspelt-layer").json()
        assert (entry["live_workers"], entry["default_cam_layer"]) == (1, "features.14")
        listed = {model["id"]: model["status"] for model in client.get("/v1/models").json()}
        assert listed["misspelt-layer"] == "ready"
        assert (listed["fixed-batch"], listed["unimportable"]) == ("failed", "failed")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0

    # The first worker still fails the folder, and says so again once no live worker serves it.
    assert wait_until(lambda: status() == "failed", timeout_s=10)
    answer = client.post("/v1/jobs", json={"model": "misspelt-layer", "image": image_b64()})
    assert answer.status_code == 503 and REASONS["misspelt-layer"] in answer.json()["detail"]


def run_worker(repository: Path, server: PrivateRedis) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "GLIMPSE_DEVICE": "cpu",
        "GLIMPSE_MODEL_REPOSITORY": str(repository),
    }
    return subprocess.run(
        [sys.executable, "-m", "workers.cli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_worker_whose_every_model_failed_exits_non_zero_with_the_reasons(
    broken: dict[str, Path], server: PrivateRedis
) -> None:
    repository = next(iter(broken.values())).parent

    finished = run_worker(repository, server)

    assert finished.returncode != 0
    for model_id, reason in REASONS.items():
        assert f"model folder {repository / model_id / '1'} not served: {reason}" in finished.stderr
    assert f"no model to serve in {repository}: all 3 model folder(s) failed" in finished.stderr


def test_a_worker_with_an_empty_repository_exits_non_zero(
    tmp_path: Path, server: PrivateRedis
) -> None:
    finished = run_worker(tmp_path, server)

    assert finished.returncode != 0
    assert f"no model to serve in {tmp_path}: none found" in finished.stderr
