"""Fixtures that build real things: a Redis server, a gateway and worker processes."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from model_zoo import add_resnet50, add_unbiased_demo  # type: ignore[import-not-found]

from schemas.sealing import KEY_FILE_VARIABLE, write_key_file
from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def payload_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One payload key for the whole run, as a deployment has: every gateway and worker a test
    starts, in this process or as a child, seals and opens with it."""
    key_file = write_key_file(tmp_path_factory.mktemp("secrets") / "payload.key")
    previous = os.environ.get(KEY_FILE_VARIABLE)
    os.environ[KEY_FILE_VARIABLE] = str(key_file)
    yield key_file
    if previous is None:
        del os.environ[KEY_FILE_VARIABLE]
    else:
        os.environ[KEY_FILE_VARIABLE] = previous


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """`REDIS_URL` when set, else a private redis-server for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with PrivateRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped repository, `demo-lesions-onnx` (the demo model served from its ONNX file),
    `demo-lesions-unbiased` (its weights without biases), and torchvision's ResNet-50 in both
    formats (`resnet50`, `resnet50-onnx`)."""
    repository = tmp_path_factory.mktemp("models")
    (repository / "demo-lesions").symlink_to(ROOT / "models" / "demo-lesions")
    shipped = ROOT / "models" / "demo-lesions" / "1"
    manifest = json.loads((shipped / "manifest.json").read_text())
    manifest.update(id="demo-lesions-onnx", format="onnx", cam_layer=None)
    del manifest["architecture"]
    onnx_version = repository / "demo-lesions-onnx" / "1"
    onnx_version.mkdir(parents=True)
    (onnx_version / "manifest.json").write_text(json.dumps(manifest))
    (onnx_version / "model.onnx").symlink_to(shipped / "model.onnx")
    add_unbiased_demo(repository, shipped)
    add_resnet50(repository)
    return repository


@pytest.fixture(scope="session")
def stack(
    redis_url: str, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevStack]:
    """A real uvicorn gateway and a real worker process serving the demo model in both formats."""
    logs = tmp_path_factory.mktemp("stack-logs")
    running = DevStack(
        port=free_port(),
        redis_url=redis_url,
        log_dir=logs,
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_MODEL_REPOSITORY": str(model_repository),
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MAX_BODY_BYTES": str(4 * 1024 * 1024),
        },
    )
    with running.serving():
        yield running


@pytest.fixture()
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http
