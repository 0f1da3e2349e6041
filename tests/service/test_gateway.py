"""The gateway in-process against a real Redis: auth, errors, and its independence from torch."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

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


def test_redis_unreachable_is_a_fast_503() -> None:
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


def test_metrics_need_the_admin_scope_and_count_requests_by_route(gateway: TestClient) -> None:
    assert gateway.get("/metrics").status_code == 401
    assert gateway.get("/metrics", headers={"X-API-Key": "viewer-secret"}).status_code == 403
    gateway.get("/v1/jobs/no-such-job", headers={"X-API-Key": "viewer-secret"})

    answer = gateway.get("/metrics", headers={"X-API-Key": "ops-secret"})

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    # By route template, never by raw path: one series however many job ids are asked for.
    by_route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404"))
    assert samples[("glimpse_http_requests_total", by_route)] == 1
    assert (
        samples[
            (
                "glimpse_http_requests_total",
                (("method", "GET"), ("route", "/metrics"), ("status", "403")),
            )
        ]
        == 1
    )
    assert samples[("glimpse_redis_up", ())] == 1


def test_metrics_without_redis_still_report_the_gateway() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", auth=False)
    with TestClient(create_app(settings)) as client:
        client.get("/v1/models")
        answer = client.get("/metrics")

    assert answer.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(answer.text)}
    assert families["glimpse_redis_up"].samples[0].value == 0
    statuses = {sample.labels.get("status") for sample in families["glimpse_http_requests"].samples}
    assert "503" in statuses
    assert "glimpse_queue_depth" not in families


def test_a_401_names_its_scheme(gateway: TestClient) -> None:
    refused = gateway.get("/v1/methods")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="glimpse"'
    wrong = gateway.post("/v1/jobs", json={}, headers={"X-API-Key": "wrong"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")


def test_framework_errors_are_problems_of_a_kind(gateway: TestClient) -> None:
    unknown = gateway.get("/v2/nothing")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["type"] == "urn:glimpse:problem:not-found"

    wrong_method = gateway.put("/v1/jobs", headers={"X-API-Key": "viewer-secret"})
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.headers["content-type"] == "application/problem+json"
    assert wrong_method.json() == {
        "type": "urn:glimpse:problem:method-not-allowed",
        "title": "Method not allowed",
        "status": 405,
    }


def test_a_sync_wait_below_a_tenth_of_a_second_is_refused_before_queueing(
    gateway: TestClient,
) -> None:
    # No model of that name is served: a wait that passed would answer 404 after looking it up.
    body = {"model": "no-such-model", "image": "AAAA"}
    key = {"X-API-Key": "viewer-secret"}
    for timeout in ("5e-324", "0.09", "0", "nan", "inf"):
        answer = gateway.post(f"/v1/explanations?timeout={timeout}", json=body, headers=key)
        assert answer.status_code == 422, (timeout, answer.text)
        assert answer.json()["errors"][0]["loc"] == ["query", "timeout"]
    assert gateway.post("/v1/explanations?timeout=0.1", json=body, headers=key).status_code == 404


def test_a_body_is_refused_before_parsing_past_its_separator_budget(gateway: TestClient) -> None:
    key = {"X-API-Key": "viewer-secret", "content-type": "application/json"}
    body = b'{"model": "m", "image": "AAAA", ' + b",".join(b'"f%d": 0' % i for i in range(6000))
    answer = gateway.post("/v1/jobs", content=body + b"}", headers=key)
    assert answer.status_code == 422
    assert answer.headers["connection"] == "close"
    assert "JSON separators" in answer.json()["detail"]
    # The unfinished JSON was never parsed: the count alone refused it.
    assert gateway.post("/v1/jobs", content=body, headers=key).status_code == 422
