"""Limits and security on a real stack with authentication on."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from log_lines import log_lines, logged_text  # type: ignore[import-not-found]
from reliability_support import (  # type: ignore[import-not-found]
    build_repository,
    faulty_stack,
    image_b64,
    wait_for,
    wait_until,
)

from service.auth import hash_key
from service.devstack import DevStack

KEYS = {
    "alice": {"scopes": ["explain"]},
    "bob": {"scopes": ["explain"]},
    "limited": {"scopes": ["explain"], "rate_limit_per_minute": 3},
    "ops": {"scopes": ["admin"]},
}
PLANTED = "PLANTED-7f3a9c-SECRET"
VIEWER = "https://viewer.example"


def key(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}-secret"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevStack, Path]]:
    root = tmp_path_factory.mktemp("secured")
    keys_file = root / "keys.json"
    keys_file.write_text(
        json.dumps(
            {"keys": [{"name": n, "sha256": hash_key(f"{n}-secret"), **v} for n, v in KEYS.items()]}
        )
    )
    logs = root / "logs"
    with faulty_stack(
        build_repository(root / "models"),
        logs,
        GLIMPSE_AUTH="on",
        GLIMPSE_API_KEYS_FILE=str(keys_file),
        GLIMPSE_QUEUE_LIMIT="3",
        GLIMPSE_MAX_BATCH="1",
        GLIMPSE_MAX_BODY_BYTES="200000",
        GLIMPSE_CORS_ORIGINS=json.dumps([VIEWER]),
        GLIMPSE_ACCESS_LOG="on",
    ) as stack:
        yield stack, logs


@pytest.fixture()
def client(secured: tuple[DevStack, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured[0].url, timeout=30) as http:
        yield http


def submit(client: httpx.Client, who: str, model: str = "fast", **fields: object) -> httpx.Response:
    body = {"model": model, "image": image_b64(0), **fields}
    return client.post("/v1/jobs", json=body, headers=key(who))


def test_keys_scopes_and_ownership(client: httpx.Client) -> None:
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"X-API-Key": "guess"}).status_code == 401
    assert client.get("/v1/models", headers={"X-API-Key": "alice-secret"}).status_code == 200
    assert client.post("/v1/jobs", json={}, headers=key("ops")).status_code == 403

    job_id = submit(client, "alice").json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=key("bob")).status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}", headers=key("bob")).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers=key("alice")).status_code == 200


def test_per_key_rate_limit(client: httpx.Client) -> None:
    # Empty bodies: counted against the limit, then refused (422) without queueing anything.
    answers = [client.post("/v1/jobs", json={}, headers=key("limited")) for _ in range(4)]
    assert [a.status_code for a in answers] == [422, 422, 422, 429]
    refused = answers[-1]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["type"].endswith("rate-limited")
    other = client.post("/v1/jobs", json={}, headers=key("alice"))
    assert other.status_code == 422  # other keys keep their budget


def test_queue_limit_timeout_and_cancel(client: httpx.Client) -> None:
    accepted, refused = [], None
    for index in range(8):
        # Distinct images: an identical request would be answered from the result cache.
        answer = submit(client, "alice", model="slow", image=image_b64(10 + index))
        if answer.status_code == 429:
            refused = answer
            break
        accepted.append(answer.json()["job_id"])
    assert refused is not None and len(accepted) <= 4
    assert refused.headers["retry-after"]
    assert refused.json()["type"].endswith("queue-full")

    cancelled = client.delete(f"/v1/jobs/{accepted[-1]}", headers=key("alice"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    with httpx.Client(base_url=str(client.base_url), timeout=30, headers=key("alice")) as alice:
        assert wait_until(lambda: alice.get(f"/v1/jobs/{accepted[0]}").json()["status"] != "queued")
        running = alice.delete(f"/v1/jobs/{accepted[0]}")
        finished = wait_for(alice, accepted)
        assert finished[accepted[-1]]["status"] == "cancelled"
        assert {finished[j]["status"] for j in accepted[:-1]} == {"succeeded"}
        # A job that already runs or has ended is left alone, and the answer says so.
        for refused_cancel, state in [
            (running, "running"),
            (alice.delete(f"/v1/jobs/{accepted[0]}"), "succeeded"),
            (alice.delete(f"/v1/jobs/{accepted[-1]}"), "cancelled"),
        ]:
            assert refused_cancel.status_code == 409, refused_cancel.text
            assert refused_cancel.headers["content-type"] == "application/problem+json"
            problem = refused_cancel.json()
            assert problem["type"].endswith(":conflict") and state in problem["detail"]

        started = time.monotonic()
        late = alice.post(
            "/v1/explanations?timeout=0.2", json={"model": "slow", "image": image_b64(1)}
        )
        assert late.status_code == 504
        assert time.monotonic() - started < 5
        job_id = late.json()["job_id"]
        assert wait_for(alice, [job_id])[job_id]["status"] == "succeeded"


def test_oversized_bodies_are_refused_before_they_are_read(client: httpx.Client) -> None:
    declared = client.post(
        "/v1/explanations",
        content=b"{" + b" " * 300_000 + b"}",
        headers={**key("alice"), "content-type": "application/json"},
    )
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "fast", "image": "'
        for _ in range(100):
            yield b"A" * 4096

    streamed = client.post(
        "/v1/explanations",
        content=chunks(),
        headers={**key("alice"), "content-type": "application/json"},
    )
    assert streamed.status_code == 413
    assert streamed.headers["content-type"] == "application/problem+json"


def test_cors_answers_only_configured_origins(client: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = client.options("/v1/explanations", headers={"Origin": VIEWER, **preflight})
    assert allowed.headers["access-control-allow-origin"] == VIEWER
    other = client.options(
        "/v1/explanations", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(stack: DevStack) -> None:
    answer = httpx.options(
        f"{stack.url}/v1/explanations",
        headers={"Origin": VIEWER, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in answer.headers


def test_logs_carry_no_image_body_or_scores(
    client: httpx.Client, secured: tuple[DevStack, Path]
) -> None:
    image = image_b64(5, text=PLANTED)
    answer = client.post(
        "/v1/explanations",
        json={"model": "fast", "image": image, "output": {"scores": "json"}},
        headers=key("alice"),
    )
    assert answer.status_code == 200
    assert answer.json()["explanations"][0]["scores"]["values"]
    broken = client.post(
        "/v1/explanations",
        json={"model": "fast", "image": image[:-40] + "!!", "methods": [PLANTED]},
        headers=key("alice"),
    )
    assert broken.status_code == 422
    poisoned = client.post(
        "/v1/explanations",
        json={"model": "fast", "image": image_b64(9, white=True, text=PLANTED)},
        headers=key("alice"),
    )
    assert poisoned.status_code == 500  # the worker's failure, logged there with its traceback
    # Where a caller may put anything: a query string, a wrong key, an idempotency key.
    queried = client.get(f"/v1/jobs/some-job?token={PLANTED}", headers={"X-API-Key": PLANTED})
    assert queried.status_code == 401
    keyed = client.post(
        f"/v1/jobs?timeout={PLANTED}",
        json={"model": "fast", "image": image_b64(6)},
        headers={**key("alice"), "Idempotency-Key": PLANTED},
    )
    assert keyed.status_code == 202

    time.sleep(0.5)
    raw = "".join(path.read_text(errors="replace") for path in secured[1].glob("*.log"))
    # Every line is JSON; what its values say, decoded from JSON's escapes, is searched too.
    decoded = logged_text(secured[1])
    worker_ids = [line.get("job_id") for line in log_lines(secured[1])["worker-0"]]
    assert answer.json()["job_id"] in worker_ids  # the logs were captured at all
    assert "/v1/jobs/some-job" in decoded  # and the access lines with them
    for logs in (raw, decoded):
        assert PLANTED not in logs
        assert image[:64] not in logs and image[-64:-40] not in logs
        assert not re.search(r"(-?\d+\.\d+, ){16}", logs), "a score array reached the logs"
        assert "alice-secret" not in logs
