"""What the gateway reads about models from what workers publish, on a real Redis."""

import asyncio
import os
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from schemas import keys
from schemas.explain import OutputOptions
from schemas.jobs import ExplanationJob
from schemas.models import FailedModel, InputSpec, ModelInfo
from schemas.sealing import PayloadSealer
from service.queue import JobQueue
from service.redis_server import PrivateRedis
from workers.store import JobStore

WORKER_TIMEOUT_S = 10.0
SEALER = PayloadSealer(os.urandom(32))
INFO = ModelInfo(
    id="chest",
    version="3",
    format="onnx",
    input=InputSpec(channels=1, height=8, width=8, mean=[0.5], std=[0.25]),
    labels=["a", "b"],
    cam_layers=["x"],
    default_cam_layer="x",
    methods=["gradcam"],
    sha256="a" * 64,
)


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateRedis]:
    with PrivateRedis() as running:
        yield running


@pytest.fixture()
def redis(server: PrivateRedis) -> Iterator[Redis]:
    client = Redis.from_url(server.url)
    client.flushdb()
    yield client
    client.close()


def failure(
    model_id: str, reported_at: float, reason: str = "cam_layer 'x' is wrong"
) -> FailedModel:
    return FailedModel(id=model_id, version="4", reason=reason, reported_at=reported_at)


def read(server: PrivateRedis, model_id: str) -> tuple[list[object], object]:
    """`JobQueue.catalogue()` and `JobQueue.model(model_id)`, as a gateway reads them."""

    async def both() -> tuple[list[object], object]:
        client = AsyncRedis.from_url(server.url)
        queue = JobQueue(client, sealer=SEALER, result_ttl_s=60, worker_timeout_s=WORKER_TIMEOUT_S)
        try:
            return list(await queue.catalogue()), await queue.model(model_id)
        finally:
            await client.aclose()

    return asyncio.run(both())


def test_a_fresh_failure_is_listed_with_its_reason(server: PrivateRedis, redis: Redis) -> None:
    JobStore(redis, "w1", 60, SEALER).register_models([], [failure("chest", time.time())])

    catalogue, one = read(server, "chest")

    assert isinstance(one, FailedModel)
    assert (one.id, one.version, one.status, one.reason) == (
        "chest",
        "4",
        "failed",
        "cam_layer 'x' is wrong",
    )
    assert catalogue == [one]
    assert not redis.exists(keys.job_stream("chest")), "a failed model gets no stream"


@pytest.mark.parametrize("served_first", [True, False], ids=["served-first", "failed-first"])
def test_a_model_one_live_worker_serves_is_ready_whatever_another_reports(
    server: PrivateRedis, redis: Redis, served_first: bool
) -> None:
    serving, failing = (
        JobStore(redis, "serving", 60, SEALER),
        JobStore(redis, "failing", 60, SEALER),
    )

    def serve() -> None:
        serving.register_models([INFO])
        serving.heartbeat(["chest"], "{}")

    def fail() -> None:
        failing.register_models([], [failure("chest", time.time())])
        failing.heartbeat([], "{}")

    for publish in (serve, fail) if served_first else (fail, serve):
        publish()

    catalogue, one = read(server, "chest")

    assert isinstance(one, ModelInfo)
    assert (one.status, one.version, one.live_workers) == ("ready", "3", 1)
    assert catalogue == [one]


def test_loading_a_fixed_folder_clears_its_failure(server: PrivateRedis, redis: Redis) -> None:
    store = JobStore(redis, "w1", 60, SEALER)
    store.register_models([], [failure("chest", time.time())])

    store.register_models([INFO])

    assert not redis.hexists(keys.MODEL_FAILURES, "chest")


def test_a_failure_stands_for_a_registered_model_whose_workers_are_gone(
    server: PrivateRedis, redis: Redis
) -> None:
    redis.hset(keys.MODEL_REGISTRY, "chest", INFO.model_dump_json())
    redis.zadd(keys.model_workers("chest"), {"dead": time.time() - 2 * WORKER_TIMEOUT_S})
    JobStore(redis, "w2", 60, SEALER).register_models([], [failure("chest", time.time())])

    catalogue, one = read(server, "chest")

    assert isinstance(one, FailedModel) and one.reason == "cam_layer 'x' is wrong"
    assert catalogue == [one]


def test_a_failure_no_worker_still_reports_is_forgotten(server: PrivateRedis, redis: Redis) -> None:
    stale = time.time() - 2 * WORKER_TIMEOUT_S
    JobStore(redis, "gone", 60, SEALER).register_models(
        [], [failure("chest", stale), failure("eye", stale)]
    )
    redis.hset(keys.MODEL_REGISTRY, "chest", INFO.model_dump_json())

    catalogue, one = read(server, "chest")
    _, eye = read(server, "eye")

    assert isinstance(one, ModelInfo) and one.live_workers == 0, "registered, not served"
    assert catalogue == [one]
    assert eye is None


def test_what_the_gateway_stores_the_worker_opens_and_nothing_is_in_clear(
    server: PrivateRedis, redis: Redis
) -> None:
    image, result = b"\x89PNG pixels 0123456789", '{"scores":[0.25,0.75]}'
    message = ExplanationJob(
        job_id="j1",
        model="chest",
        enqueued_at=0.0,
        methods=["gradcam"],
        target="top1",
        params={},
        output=OutputOptions(),
    )
    store = JobStore(redis, "w1", 60, SEALER)
    cache_key = keys.explanation_cache("a" * 64, "b" * 64)

    async def enqueue_then_read() -> tuple[bytes | None, bytes | None]:
        client = AsyncRedis.from_url(server.url)
        queue = JobQueue(client, sealer=SEALER, result_ttl_s=60, worker_timeout_s=1)
        try:
            await queue.enqueue(message, image, "owner")
            assert store.image("j1") == image
            assert image not in (redis.get(keys.job_image("j1")) or b"")
            store.cache(cache_key, result)
            store.complete("chest", "0-1", "j1", None, result_json=result)
            stored = await queue.record("j1", "owner")
            return (stored.result_json if stored else None), await queue.cached(cache_key)
        finally:
            await client.aclose()

    recorded, cached = asyncio.run(enqueue_then_read())

    assert recorded == cached == result.encode()
    assert result.encode() not in (redis.get(cache_key) or b"")
    assert b"0.25" not in (redis.hget(keys.job_record("j1"), "result") or b"")
