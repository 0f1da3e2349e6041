"""Admission on a real stack: the queue limit under concurrency, `Idempotency-Key` retries, and
a sync client whose gateway died getting its result through another one."""

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import redis
from reliability_support import (  # type: ignore[import-not-found]
    build_repository,
    faulty_stack,
    image_b64,
    wait_until,
)

from schemas import keys
from schemas.jobs import JobRecord
from service.auth import hash_key
from service.devstack import DevStack

QUEUE_LIMIT = 16
KEYS = ("alice", "bob")


def key(name: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {name}-secret"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    root = tmp_path_factory.mktemp("admission")
    keys_file = root / "keys.json"
    entries = [{"name": name, "sha256": hash_key(f"{name}-secret")} for name in KEYS]
    keys_file.write_text(json.dumps({"keys": entries}))
    with faulty_stack(
        build_repository(root / "models"),
        root / "logs",
        GLIMPSE_AUTH="on",
        GLIMPSE_API_KEYS_FILE=str(keys_file),
        GLIMPSE_QUEUE_LIMIT=str(QUEUE_LIMIT),
        # The worker is held with SIGSTOP below; it must still count as live meanwhile.
        GLIMPSE_WORKER_TIMEOUT_S="300",
    ) as running:
        yield running


@pytest.fixture()
def store(stack: DevStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url or "")
    yield client
    client.close()


@contextmanager
def worker_held(stack: DevStack) -> Iterator[None]:
    """The worker stopped (SIGSTOP) for the block: every admitted job stays in the stream."""
    worker = stack.processes[0]
    worker.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        worker.send_signal(signal.SIGCONT)


def job_records(store: redis.Redis) -> set[bytes]:
    return set(store.scan_iter(keys.job_record("*")))


def results_stored(store: redis.Redis) -> int:
    return int(store.hget(keys.STATS, "results_stored") or 0)


def test_the_queue_limit_holds_under_concurrent_requests(
    stack: DevStack, store: redis.Redis
) -> None:
    depths: list[int] = []
    watching = threading.Event()

    def watch_depth() -> None:
        while not watching.is_set():
            depths.append(int(store.xlen(keys.job_stream("fast"))))
            time.sleep(0.005)

    def request(index: int) -> httpx.Response:
        body = {"model": "fast", "image": image_b64(1000 + index)}
        with httpx.Client(base_url=stack.url, timeout=120, headers=key("alice")) as client:
            if index % 2:
                return client.post("/v1/explanations?timeout=120", json=body)
            return client.post("/v1/jobs", json=body)

    watcher = threading.Thread(target=watch_depth)
    with ThreadPoolExecutor(max_workers=60) as pool:
        with worker_held(stack):
            watcher.start()
            answers: list[Future[httpx.Response]] = [pool.submit(request, n) for n in range(60)]

            def all_answered_but_the_admitted_sync_ones() -> bool:
                done = [a.result().status_code for a in answers if a.done()]
                waiting = int(store.xlen(keys.job_stream("fast"))) - done.count(202)
                return len(done) + waiting >= len(answers)

            assert wait_until(all_answered_but_the_admitted_sync_ones, timeout_s=60)
            held_depth = int(store.xlen(keys.job_stream("fast")))
        statuses = [answer.result().status_code for answer in answers]
    watching.set()
    watcher.join()

    assert held_depth == QUEUE_LIMIT
    assert max(depths) <= QUEUE_LIMIT
    assert statuses.count(429) == 60 - QUEUE_LIMIT
    assert statuses.count(202) + statuses.count(200) == QUEUE_LIMIT, statuses


def test_a_retried_request_gets_the_first_ones_job(stack: DevStack, store: redis.Redis) -> None:
    body = {"model": "fast", "image": image_b64(2000)}
    before = job_records(store)
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        first = client.post("/v1/jobs", json=body, headers=key("alice", "order-7"))
        again = client.post("/v1/jobs", json=body, headers=key("alice", "order-7"))
        by_bob = client.post("/v1/jobs", json=body, headers=key("bob", "order-7"))
        changed = client.post(
            "/v1/jobs", json={**body, "methods": ["saliency"]}, headers=key("alice", "order-7")
        )
        sync_first = client.post("/v1/explanations", json=body, headers=key("alice", "sync-7"))
        sync_again = client.post("/v1/explanations", json=body, headers=key("alice", "sync-7"))
        bad_key = client.post("/v1/jobs", json=body, headers=key("alice", "no spaces"))

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert by_bob.status_code == 202 and by_bob.json()["job_id"] != first.json()["job_id"]
    assert changed.status_code == 422, changed.text
    assert "Idempotency-Key" in changed.json()["detail"]
    assert sync_first.status_code == sync_again.status_code == 200, sync_again.text
    assert sync_again.json()["job_id"] == sync_first.json()["job_id"]
    assert bad_key.status_code == 422
    created = job_records(store) - before
    assert len(created) == 3, "alice's job, bob's and the sync one: no retry made a job"


def test_a_sync_client_of_a_killed_gateway_gets_its_result_by_retrying(
    stack: DevStack, store: redis.Redis
) -> None:
    body = {"model": "fast", "image": image_b64(3000)}
    headers = key("alice", "scan-0042")
    records, stored = job_records(store), results_stored(store)

    def ask(timeout_s: float) -> httpx.Response:
        with httpx.Client(base_url=stack.url, timeout=timeout_s + 10) as client:
            return client.post(f"/v1/explanations?timeout={timeout_s}", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=2) as pool, worker_held(stack):
        lost = pool.submit(ask, 120)
        assert wait_until(lambda: len(job_records(store) - records) == 1)
        (record,) = job_records(store) - records
        stack.kill(stack.processes[-1])  # the gateway, started last
        with pytest.raises(httpx.TransportError):
            lost.result()
        stack.start_gateway()
        stack.wait_ready()
        started = time.monotonic()
        retried = pool.submit(ask, 120)
        # The retry found the job and now waits for it in the new gateway.
        assert wait_until(lambda: store.hexists(record, JobRecord.REPLY_TO))
    answer = retried.result()
    waited = time.monotonic() - started

    assert answer.status_code == 200, answer.text
    assert job_records(store) - records == {record}, "the retry made no job"
    assert answer.json()["job_id"] == record.decode().removeprefix(keys.job_record(""))
    assert results_stored(store) == stored + 1, "computed once, for the retry"
    assert waited < 30, "woken when the job finished, not at the end of its wait"
