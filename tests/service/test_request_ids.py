"""Every answer of the gateway carries an `X-Request-ID`, the caller's when it is valid, and the
access log names it with the request's method, path (never its query) and status."""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from schemas.logs import JsonLineFormatter, is_valid_request_id
from service.app import create_app
from service.auth import hash_key
from service.config import Settings

VIEWER = "https://viewer.example"
EXPLAINER = {"Authorization": "Bearer viewer-secret"}
MAX_BODY_BYTES = 4096


@pytest.fixture()
def app(redis_url: str, tmp_path: Path) -> FastAPI:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(
        json.dumps(
            {
                "keys": [
                    {"name": "viewer", "sha256": hash_key("viewer-secret"), "scopes": ["explain"]}
                ]
            }
        )
    )
    settings = Settings(
        redis_url=redis_url,
        auth=True,
        api_keys_file=keys_file,
        max_body_bytes=MAX_BODY_BYTES,
        cors_origins=[VIEWER],
        access_log=True,
    )
    app = create_app(settings)

    @app.get("/broken", include_in_schema=False)
    async def broken() -> None:
        raise RuntimeError("a bug")

    return app


@pytest.fixture()
def gateway(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@dataclass(frozen=True)
class Call:
    """One request, and the status it is answered with."""

    method: str
    path: str
    status: int
    body: object = None
    content: bytes | None = None
    content_type: str | None = None
    with_key: bool = True

    def send(self, gateway: TestClient, headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {**(EXPLAINER if self.with_key else {}), **(headers or {})}
        if self.content_type is not None:
            sent["content-type"] = self.content_type
        if self.body is not None:
            return gateway.request(self.method, self.path, headers=sent, json=self.body)
        return gateway.request(self.method, self.path, headers=sent, content=self.content)


CALLS = [
    Call("GET", "/v1/methods", 200),
    Call("GET", "/healthz", 200),
    Call("GET", "/v1/methods", 401, with_key=False),
    Call("GET", "/v1/jobs/no-such-job", 404),
    Call("GET", "/no/such/path", 404),
    Call("DELETE", "/v1/methods", 405),
    Call("POST", "/v1/explanations", 413, content=b"x" * (MAX_BODY_BYTES + 1)),
    Call("POST", "/v1/explanations", 415, content=b"image", content_type="text/plain"),
    Call("POST", "/v1/explanations?timeout=0.01", 422, body={}),
    Call("POST", "/v1/models/no-such-model:explain", 404, body={"instances": []}),
    Call("POST", "/v1/models/no-such-model/visualizations", 404, body={"target": 0}),
    Call("GET", "/broken", 500),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda call: f"{call.status}-{call.path}")
def test_every_answer_returns_the_callers_request_id(gateway: TestClient, call: Call) -> None:
    answer = call.send(gateway, {"X-Request-ID": "viewer:7f3a.b_9-x"})

    assert answer.status_code == call.status, answer.text
    assert answer.headers["x-request-id"] == "viewer:7f3a.b_9-x"
    if call.status >= 400:
        assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("call", CALLS, ids=lambda call: f"{call.status}-{call.path}")
def test_without_a_request_id_every_answer_gets_a_new_one(gateway: TestClient, call: Call) -> None:
    first, second = call.send(gateway), call.send(gateway)

    assert first.status_code == second.status_code == call.status
    made = first.headers["x-request-id"], second.headers["x-request-id"]
    assert all(is_valid_request_id(value) for value in made)
    assert made[0] != made[1]


@pytest.mark.parametrize("given", ["x" * 129, "two words", "tab\there", "ünï", ""])
def test_an_invalid_request_id_is_replaced(gateway: TestClient, given: str) -> None:
    headers: dict[str, str | bytes] = {**EXPLAINER, "X-Request-ID": given.encode()}
    answer = gateway.get("/v1/methods", headers=headers)

    assert answer.status_code == 200
    assert answer.headers["x-request-id"] not in (given, "")
    assert is_valid_request_id(answer.headers["x-request-id"])


def test_a_browser_may_send_and_read_the_request_id(gateway: TestClient) -> None:
    preflight = gateway.options(
        "/v1/explanations",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-request-id",
            "X-Request-ID": "preflight-1",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["x-request-id"] == "preflight-1"
    assert "x-request-id" in preflight.headers["access-control-allow-headers"].lower()

    answer = gateway.get("/v1/methods", headers={**EXPLAINER, "Origin": VIEWER})
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_the_access_log_has_one_line_per_request_without_query_or_probe(
    gateway: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="glimpse.access")

    gateway.get("/healthz")
    gateway.get("/readyz")
    gateway.get("/v1/jobs/job-1?token=SECRET-IN-QUERY", headers={"X-Request-ID": "r-404"})
    gateway.get("/broken", headers={"X-Request-ID": "r-500"})

    lines = [
        json.loads(JsonLineFormatter().format(record))
        for record in caplog.records
        if record.name == "glimpse.access"
    ]
    assert [(line["request_id"], line["path"], line["status"]) for line in lines] == [
        ("r-404", "/v1/jobs/job-1", 401),
        ("r-500", "/broken", 500),
    ]
    assert all(line["method"] == "GET" and line["duration_ms"] >= 0 for line in lines)
    assert '"GET /v1/jobs/job-1 HTTP/1.1" 401 ' in lines[0]["event"]
    assert "SECRET-IN-QUERY" not in caplog.text


def test_no_access_log_unless_asked(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="glimpse.access")
    with TestClient(create_app(Settings(redis_url=redis_url, auth=False))) as quiet:
        answer = quiet.get("/v1/methods")

    assert answer.status_code == 200 and is_valid_request_id(answer.headers["x-request-id"])
    assert not [record for record in caplog.records if record.name == "glimpse.access"]
