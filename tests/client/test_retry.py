"""The retry policy, and the clients' retry loop on a scripted transport (no service here: the
integration tests retry against a real one)."""

import asyncio
import email.utils
import time
from collections.abc import Callable

import glimpse_client as g
import httpx
import pytest
from glimpse_client.retry import Retry, parse_retry_after

PROBLEM = {"type": "urn:glimpse:problem:queue-full", "title": "Full", "status": 429, "detail": "d"}


def test_retry_after_is_delta_seconds_or_an_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_the_policy_honours_retry_after_and_bounds_everything() -> None:
    policy = Retry(attempts=2, backoff_s=1.0, max_backoff_s=1.5, max_wait_s=10)
    assert policy.delay(1, 4.0) == 4.0
    assert policy.delay(1, 11.0) is None  # longer than the caller will wait
    assert policy.delay(3, 1.0) is None  # past the bounded count
    assert 0.5 <= (policy.delay(1, None) or 0) <= 1.0
    assert 0.75 <= (policy.delay(2, None) or 0) <= 1.5
    assert Retry(attempts=0).delay(1, 1.0) is None


Answer = Callable[[], httpx.Response]


def scripted(answers: list[Answer]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next of `answers`, then the last again."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]()

    return httpx.MockTransport(handle), seen


def full(retry_after: str | None = "0") -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda: httpx.Response(429, json=PROBLEM, headers=headers)


def OK() -> httpx.Response:  # noqa: N802 - reads as the answer it is
    return httpx.Response(200, json=[{"id": "demo"}])


def test_429s_are_retried_until_the_call_succeeds() -> None:
    transport, seen = scripted([full(), full(), OK])
    with g.Client("http://glimpse.test", "k", transport=transport) as client:
        assert [m.id for m in client.models()] == ["demo"]
    assert len(seen) == 3
    assert all(r.headers["authorization"] == "Bearer k" for r in seen)


def test_the_retries_are_bounded_and_the_last_error_is_raised() -> None:
    transport, seen = scripted([full()])
    with (
        g.Client("http://glimpse.test", transport=transport, retry=Retry(attempts=2)) as client,
        pytest.raises(g.QueueFull) as raised,
    ):
        client.models()
    assert len(seen) == 3 and raised.value.retry_after == 0


def test_a_retry_after_beyond_the_wait_budget_is_raised_at_once() -> None:
    transport, seen = scripted([full("120"), OK])
    with (
        g.Client("http://glimpse.test", transport=transport) as client,
        pytest.raises(g.QueueFull) as raised,
    ):
        client.models()
    assert len(seen) == 1 and raised.value.retry_after == 120


def test_503_without_retry_after_backs_off() -> None:
    def unavailable() -> httpx.Response:
        return httpx.Response(503, json={"title": "Service unavailable", "status": 503})

    transport, seen = scripted([unavailable, unavailable, OK])
    started = time.monotonic()
    policy = Retry(attempts=3, backoff_s=0.1)
    with g.Client("http://glimpse.test", transport=transport, retry=policy) as client:
        client.models()
    assert len(seen) == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # half of each backoff at the least


@pytest.mark.parametrize("status", [400, 404, 500, 504])
def test_other_errors_are_not_retried(status: int) -> None:
    transport, seen = scripted([lambda: httpx.Response(status, json={"status": status}), OK])
    with (
        g.Client("http://glimpse.test", transport=transport) as client,
        pytest.raises(g.GlimpseError) as raised,
    ):
        client.models()
    assert len(seen) == 1 and raised.value.status == status


def test_a_refused_connection_is_retried_and_then_unreachable() -> None:
    attempts: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("refused", request=request)

    policy = Retry(attempts=2, backoff_s=0.01)
    refusing = g.Client("http://glimpse.test", transport=httpx.MockTransport(refuse), retry=policy)
    with refusing, pytest.raises(g.Unreachable) as raised:
        refusing.models()
    assert len(attempts) == 3 and raised.value.status is None


def test_a_read_timeout_is_not_retried() -> None:
    attempts: list[httpx.Request] = []

    def stall(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ReadTimeout("slow", request=request)

    stalling = g.Client("http://glimpse.test", transport=httpx.MockTransport(stall))
    with stalling, pytest.raises(g.Timeout) as raised:
        stalling.models()
    assert len(attempts) == 1 and raised.value.status is None


def test_the_async_client_retries_alike() -> None:
    transport, seen = scripted([full(), OK])

    async def call() -> list[g.ModelInfo]:
        async with g.AsyncClient("http://glimpse.test", transport=transport) as client:
            return await client.models()

    assert [m.id for m in asyncio.run(call())] == ["demo"]
    assert len(seen) == 2
