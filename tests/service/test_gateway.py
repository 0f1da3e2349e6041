"""The gateway in-process against a real Redis: auth, errors, and its independence from torch."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import hash_key
from service.config import Settings


@pytest.fixture()
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"name": "viewer", "sha256": hash_key("viewer-secret"), "scopes": ["explain"]},
                    {"name": "ops", "sha256": hash_key("ops-secret"), "scopes": ["admin"]},
                ]
            }
        )
    )
    return path


@pytest.fixture()
def gateway(redis_url: str, keys_file: Path) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, auth=True, api_keys_file=keys_file)
    with TestClient(create_app(settings)) as client:
        yield client


def test_keys_are_required_and_scoped(gateway: TestClient) -> None:
    assert gateway.get("/v1/methods").status_code == 401
    assert gateway.get("/v1/methods", headers={"X-API-Key": "wrong"}).status_code == 401
    ok = gateway.get("/v1/methods", headers={"Authorization": "Bearer viewer-secret"})
    assert ok.status_code == 200
    assert gateway.get("/v1/methods", headers={"X-API-Key": "viewer-secret"}).status_code == 200
    forbidden = gateway.get("/v1/methods", headers={"X-API-Key": "ops-secret"})
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"] == "application/problem+json"
    assert gateway.get("/healthz").status_code == 200


def test_redis_unreachable_is_a_fast_503(keys_file: Path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", auth=False)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/models")
        assert answer.status_code == 503
        assert answer.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] is False


def test_the_gateway_never_imports_torch() -> None:
    code = (
        "import sys; from service.app import create_app; create_app(); "
        "import service.cli, service.devstack; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'workers')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
