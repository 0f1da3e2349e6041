"""The gateway's side of the queue on a real Redis: what it reads about models from what workers
publish, and how it admits jobs."""

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from model_infos import small_model_info  # type: ignore[import-not-found]
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas import keys
from schemas.explain import OutputOptions
from schemas.jobs import ExplanationJob, JobRecord
from schemas.models import FailedModel, ModelInfo
from schemas.sealing import PayloadSealer, result_field
from service.auth import Principal
from service.errors import QueueFull
from service.idempotency import IdempotencyKeyReused, idempotent_request
from service.queue import REPLICA_ACK_TIMEOUT_MS, CompletionListener, JobQueue, NewJob
from service.redis_server import PrivateRedis
from workers.store import JobStore, StreamJob

T = TypeVar("T")

SEALER = PayloadSealer(os.urandom(32))
WORKER_TIMEOUT_S = 10.0
INFO = small_model_info("chest", "3", live_workers=0)


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


def test_loading_a_fixed_folder_clears_its_failure(redis: Redis) -> None:
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


def explanation(job_id: str, model: str = "chest", reply_to: str | None = None) -> ExplanationJob:
    return ExplanationJob(
        job_id=job_id,
        model=model,
        methods=["gradcam"],
        target="top1",
        params={},
        output=OutputOptions(),
        reply_to=reply_to,
        enqueued_at=time.time(),
    )


def job(job_id: str, reply_to: str | None = None) -> NewJob:
    return NewJob(explanation(job_id, reply_to=reply_to), image=b"image of " + job_id.encode())


def run_on_queue(
    url: str,
    work: Callable[[JobQueue], Awaitable[T]],
    **client_options: Any,
) -> T:
    """`work` on a gateway's `JobQueue` whose client connects to `url`."""

    async def on_queue() -> T:
        client = AsyncRedis.from_url(url, **client_options)
        try:
            return await work(
                JobQueue(client, sealer=SEALER, result_ttl_s=60, worker_timeout_s=WORKER_TIMEOUT_S)
            )
        finally:
            await client.aclose()

    return asyncio.run(on_queue())


ALICE_KEY = Principal(name="alice", scopes=frozenset({"explain"}))
BOB_KEY = Principal(name="bob", scopes=frozenset({"explain"}))


def test_the_queue_limit_holds_under_concurrent_enqueues(
    server: PrivateRedis, redis: Redis
) -> None:
    async def sixty_at_once(queue: JobQueue) -> list[object]:
        attempts = [queue.enqueue([job(f"job-{n}")], "alice", queue_limit=16) for n in range(60)]
        return await asyncio.gather(*attempts, return_exceptions=True)

    outcomes = run_on_queue(server.url, sixty_at_once, max_connections=60)

    admitted = [o for o in outcomes if isinstance(o, list)]
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert (len(admitted), len(refused)) == (16, 44)
    assert redis.xlen(keys.job_stream("chest")) == 16
    admitted_ids = {job_id for ids in admitted for job_id in ids}
    assert sum(bool(redis.exists(keys.job_record(f"job-{n}"))) for n in range(60)) == 16
    assert all(redis.exists(keys.job_image(job_id)) for job_id in admitted_ids)
    assert refused[0].retry_after and "16 of at most 16" in refused[0].detail


def test_several_jobs_are_queued_all_or_none(server: PrivateRedis, redis: Redis) -> None:
    async def fill_then_add(queue: JobQueue) -> tuple[object, list[str]]:
        await queue.enqueue([job(f"old-{n}") for n in range(14)], "alice", queue_limit=16)
        try:
            await queue.enqueue([job(f"new-{n}") for n in range(3)], "alice", queue_limit=16)
        except QueueFull as exc:
            too_many: object = exc
        else:
            too_many = None
        return too_many, await queue.enqueue([job("a"), job("b")], "alice", queue_limit=16)

    too_many, fitting = run_on_queue(server.url, fill_then_add)

    assert isinstance(too_many, QueueFull) and "this request brings 3" in too_many.detail
    assert not any(redis.exists(keys.job_record(f"new-{n}")) for n in range(3))
    assert fitting == ["a", "b"]
    assert redis.xlen(keys.job_stream("chest")) == 16


def test_an_answered_job_takes_no_room_in_the_queue(server: PrivateRedis, redis: Redis) -> None:
    async def full_then_answered(queue: JobQueue) -> list[str]:
        await queue.enqueue([job("queued")], "alice", queue_limit=1)
        answered = NewJob(explanation("answered"), answer='{"cached": true}')
        return await queue.enqueue([answered], "alice", queue_limit=1)

    assert run_on_queue(server.url, full_then_answered) == ["answered"]
    record_key = keys.job_record("answered")
    record = redis.hgetall(record_key)
    stored = SEALER.open(record[b"result"], result_field(record_key, JobRecord.RESULT))
    assert record[b"status"] == b"succeeded" and stored == b'{"cached": true}'
    assert redis.xlen(keys.job_stream("chest")) == 1


def test_a_repeated_idempotency_key_returns_the_first_jobs(
    server: PrivateRedis, redis: Redis
) -> None:
    first = idempotent_request(ALICE_KEY, "retry-me", b"the request")
    other_body = idempotent_request(ALICE_KEY, "retry-me", b"another request")
    bobs = idempotent_request(BOB_KEY, "retry-me", b"the request")

    async def submit_thrice(queue: JobQueue) -> tuple[list[str], list[str], list[str], object]:
        original = await queue.enqueue([job("first")], "alice", queue_limit=16, idempotent=first)
        retried = await queue.enqueue(
            [job("second", reply_to="glimpse:done:b")], "alice", queue_limit=16, idempotent=first
        )
        by_bob = await queue.enqueue([job("bob's")], "bob", queue_limit=16, idempotent=bobs)
        try:
            await queue.enqueue([job("third")], "alice", queue_limit=16, idempotent=other_body)
        except IdempotencyKeyReused as exc:
            return original, retried, by_bob, exc
        return original, retried, by_bob, None

    original, retried, by_bob, reused = run_on_queue(server.url, submit_thrice)

    assert original == retried == ["first"]
    assert by_bob == ["bob's"], "a key is scoped to the API key that sent it"
    assert isinstance(reused, IdempotencyKeyReused)
    assert not redis.exists(keys.job_record("second")) and not redis.exists(
        keys.job_record("third")
    )
    assert redis.xlen(keys.job_stream("chest")) == 2
    # The retry waits in another gateway: the worker announces the outcome there.
    assert redis.hget(keys.job_record("first"), JobRecord.REPLY_TO) == b"glimpse:done:b"
    stored = [k for k in redis.scan_iter(keys.idempotency("*", "*"))]
    assert len(stored) == 2 and not any(b"retry-me" in k or b"alice" in k for k in stored)


@pytest.mark.usefixtures("redis")  # an empty database
def test_a_full_queue_still_replays_an_admitted_request(server: PrivateRedis) -> None:
    request = idempotent_request(ALICE_KEY, "k", b"the request")

    async def admit_then_retry(queue: JobQueue) -> list[str]:
        await queue.enqueue([job("first")], "alice", queue_limit=1, idempotent=request)
        return await queue.enqueue([job("again")], "alice", queue_limit=1, idempotent=request)

    assert run_on_queue(server.url, admit_then_retry) == ["first"]


class FaultyLink:
    """A TCP proxy in front of Redis that breaks the connection of every script call (EVALSHA,
    EVAL): after forwarding it and reading Redis's reply (`lose="reply"`: the script ran, the
    client cannot know), or before forwarding it (`lose="request"`: the script never ran).
    Every other command passes."""

    SCRIPT_CALLS = (b"$7\r\nEVALSHA\r\n", b"$4\r\nEVAL\r\n")

    def __init__(self, upstream_port: int, lose: str) -> None:
        self.upstream_port = upstream_port
        self.lose = lose
        self.broken = 0

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            while chunk := await client_reader.read(1 << 20):
                script_call = any(call in chunk.upper() for call in self.SCRIPT_CALLS)
                if script_call and self.lose == "request":
                    self.broken += 1
                    return
                writer.write(chunk)
                await writer.drain()
                reply = await reader.read(1 << 20)
                if script_call:
                    self.broken += 1
                    return
                client_writer.write(reply)
                await client_writer.drain()
        finally:
            writer.close()
            client_writer.close()


def enqueue_through(link: FaultyLink, job_id: str) -> object:
    """The outcome of enqueueing `job_id` through `link`: its ids, or the error it raised."""

    async def through_link() -> object:
        proxy = await link.serve()
        port = proxy.sockets[0].getsockname()[1]

        async def enqueue(queue: JobQueue) -> list[str]:
            return await queue.enqueue([job(job_id)], "alice", queue_limit=16)

        client = AsyncRedis(port=port, retry=Retry(NoBackoff(), 2), socket_timeout=2)
        try:
            return await enqueue(
                JobQueue(client, sealer=SEALER, result_ttl_s=60, worker_timeout_s=WORKER_TIMEOUT_S)
            )
        except RedisConnectionError as exc:
            return exc
        finally:
            await client.aclose()
            proxy.close()

    return asyncio.run(through_link())


def test_a_lost_reply_to_the_enqueue_is_an_admission(server: PrivateRedis, redis: Redis) -> None:
    link = FaultyLink(server.port, lose="reply")

    outcome = enqueue_through(link, "ran")

    assert link.broken == 3, "the client tried, and retried, in vain"
    assert outcome == ["ran"], "the record exists: the job was admitted"
    assert redis.xlen(keys.job_stream("chest")) == 1, "the re-sent script queued it once"


def test_a_lost_request_to_enqueue_stays_an_error(server: PrivateRedis, redis: Redis) -> None:
    link = FaultyLink(server.port, lose="request")

    outcome = enqueue_through(link, "never-ran")

    assert link.broken == 3
    assert isinstance(outcome, RedisConnectionError)
    assert not redis.exists(keys.job_record("never-ran"))
    assert redis.xlen(keys.job_stream("chest")) == 0


def test_an_unreachable_redis_stays_an_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    async def enqueue(queue: JobQueue) -> list[str]:
        return await queue.enqueue([job("nowhere")], "alice", queue_limit=16)

    with pytest.raises(RedisConnectionError):
        run_on_queue(f"redis://127.0.0.1:{closed_port}", enqueue, socket_connect_timeout=1)


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
            await queue.enqueue([NewJob(message, image)], "owner", queue_limit=10)
            assert store.image("j1") == image
            assert image not in (redis.get(keys.job_image("j1")) or b"")
            store.cache(cache_key, result)
            store.complete(StreamJob("chest", "0-1", "j1", None), result_json=result)
            stored = await queue.record("j1", "owner")
            return (stored.result_json if stored else None), await queue.cached(cache_key)
        finally:
            await client.aclose()

    recorded, cached = asyncio.run(enqueue_then_read())

    assert recorded == cached == result.encode()
    assert result.encode() not in (redis.get(cache_key) or b"")
    assert b"0.25" not in (redis.hget(keys.job_record("j1"), "result") or b"")


def enqueue_awaiting_a_replica(url: str, job_id: str) -> float:
    """Seconds one admission takes on a queue that awaits one replica's acknowledgement."""

    async def timed() -> float:
        client = AsyncRedis.from_url(url)
        queue = JobQueue(
            client,
            sealer=SEALER,
            result_ttl_s=60,
            worker_timeout_s=WORKER_TIMEOUT_S,
            replica_acks=1,
        )
        try:
            started = time.perf_counter()
            await queue.enqueue([job(job_id)], "alice", queue_limit=10)
            return time.perf_counter() - started
        finally:
            await client.aclose()

    return asyncio.run(timed())


def test_an_admission_awaits_a_replica_and_stands_without_one(
    server: PrivateRedis, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    took_s = enqueue_awaiting_a_replica(server.url, "unreplicated")

    # WAIT's own bound: the primary answers at the timeout, not before, when no replica acks.
    assert took_s >= REPLICA_ACK_TIMEOUT_MS / 1000
    assert redis.exists(keys.job_record("unreplicated"))
    assert "0 of 1 Redis replicas" in caplog.text


def in_sync(replica: Redis) -> bool:
    return bool(replica.info("replication")["master_link_status"] == "up")


def test_an_admitted_job_is_on_the_replica_when_the_gateway_answers(
    server: PrivateRedis, redis: Redis, tmp_path: Path
) -> None:
    # A data_dir of its own: the replica writes the primary's snapshot there.
    with PrivateRedis(data_dir=tmp_path) as replica_server:
        replica = Redis.from_url(replica_server.url)
        replica.replicaof("127.0.0.1", server.port)
        try:
            deadline = time.monotonic() + 10
            while not in_sync(replica) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert in_sync(replica)

            took_s = enqueue_awaiting_a_replica(server.url, "replicated")

            assert replica.exists(keys.job_record("replicated"))
            assert replica.exists(keys.job_image("replicated"))
            assert took_s < REPLICA_ACK_TIMEOUT_MS / 1000
        finally:
            redis.execute_command("CLIENT", "KILL", "TYPE", "replica")
            replica.close()


STOP_LIMIT_S = 5.0


def test_the_completion_listener_stops_wherever_it_is_cancelled(server: PrivateRedis) -> None:
    """A cancellation can land while redis-py reads the subscription; the gateway's shutdown
    must end anyway."""

    async def start_and_stop(rounds: int) -> list[float]:
        stopped_in = []
        for round_ in range(rounds):
            redis = AsyncRedis.from_url(server.url)
            listener = CompletionListener(redis)
            await listener.start()
            # Cancelled before, during and after its subscription, at varied points.
            await asyncio.sleep(0.0005 * (round_ % 10))
            started = time.monotonic()
            await asyncio.wait_for(listener.stop(), timeout=STOP_LIMIT_S)
            stopped_in.append(time.monotonic() - started)
            await redis.aclose()
        return stopped_in

    stopped_in = asyncio.run(start_and_stop(40))

    # A stop takes milliseconds; one that waited out the limit was stuck (a task cancelled
    # while awaited ends only through that second cancellation).
    assert len(stopped_in) == 40 and max(stopped_in) < STOP_LIMIT_S
