"""The gateway's side of the queue: enqueue jobs, wait for them, read their state."""

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from schemas import keys
from schemas.jobs import ExplanationJob, JobRecord, JobState, JobStatus, VisualizationJob
from schemas.models import FailedModel, ModelInfo
from schemas.sealing import PayloadSealer, SealedPayloadError, result_field
from service.errors import RateLimited

log = logging.getLogger(__name__)


RATE_WINDOW_S = 60

# A sliding window: the caller's request times in a sorted set. Returns nil when the request is
# admitted (and recorded), else the time of the oldest request still in the window.
_SPEND_RATE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return nil
"""

# Cancels a queued job of the caller's in one step, so that no worker can claim it in between.
# Returns nil for an unknown job or another key's, else the state the job was in.
_CANCEL = """
local record = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[2])
if not record[1] or record[2] ~= ARGV[3] then return nil end
if record[1] == ARGV[4] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
  redis.call('DEL', KEYS[2])
end
return record[1]
"""


@dataclass(frozen=True)
class StoredJob:
    """A job record as Redis holds it; the result stays serialised until someone needs it."""

    job_id: str
    state: JobState
    model: str
    created_at: float
    result_json: bytes | None
    error_json: bytes | None

    def status(self) -> JobStatus:
        return JobStatus(
            job_id=self.job_id,
            status=self.state,
            model=self.model,
            created_at=self.created_at,
            result=json.loads(self.result_json) if self.result_json else None,
            error=json.loads(self.error_json) if self.error_json else None,
        )


class JobQueue:
    """Redis-backed job store shared by every gateway and worker.

    Images and results are stored sealed by `sealer` (`schemas.sealing`), never in clear.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        sealer: PayloadSealer,
        result_ttl_s: int,
        worker_timeout_s: float,
    ) -> None:
        self.redis = redis
        self.sealer = sealer
        self.result_ttl_s = result_ttl_s
        self.worker_timeout_s = worker_timeout_s
        self._spend_rate = redis.register_script(_SPEND_RATE)
        self._cancel = redis.register_script(_CANCEL)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def models(self) -> dict[str, ModelInfo]:
        """Every model a worker has registered, with its live workers and queued jobs."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(keys.MODEL_REGISTRY))
        infos = {name.decode(): ModelInfo.model_validate_json(value) for name, value in raw.items()}
        if infos:
            since = time.time() - self.worker_timeout_s
            async with self.redis.pipeline(transaction=False) as pipe:
                for model_id in infos:
                    pipe.zcount(keys.model_workers(model_id), since, "+inf")
                    pipe.xlen(keys.job_stream(model_id))
                counts = await pipe.execute()
            for index, info in enumerate(infos.values()):
                info.live_workers, info.queued = int(counts[2 * index]), int(counts[2 * index + 1])
        return infos

    async def catalogue(self) -> list[ModelInfo | FailedModel]:
        """Every model a worker registered or failed to load, by id, as `served_or_failed` says."""
        infos = await self.models()
        since = time.time() - self.worker_timeout_s
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(keys.MODEL_FAILURES))
        failures = {name.decode(): value for name, value in raw.items()}
        entries = (
            served_or_failed(infos.get(model_id), failures.get(model_id), since)
            for model_id in sorted(infos.keys() | failures.keys())
        )
        return [entry for entry in entries if entry is not None]

    async def model(self, model_id: str) -> ModelInfo | FailedModel | None:
        """One model with its live workers and queued jobs, or its failure, in one round trip."""
        since = time.time() - self.worker_timeout_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.MODEL_REGISTRY, model_id)
            pipe.zcount(keys.model_workers(model_id), since, "+inf")
            pipe.xlen(keys.job_stream(model_id))
            pipe.hget(keys.MODEL_FAILURES, model_id)
            raw, count, queued, failure = await pipe.execute()
        info = None
        if raw is not None:
            info = ModelInfo.model_validate_json(raw)
            info.live_workers, info.queued = int(count), int(queued)
        return served_or_failed(info, failure, since)

    async def live_workers(self) -> int:
        return int(
            await self.redis.zcount(keys.LIVE_WORKERS, time.time() - self.worker_timeout_s, "+inf")
        )

    async def cached(self, key: str) -> bytes | None:
        """A stored result that a repeated request may reuse; None also for one that does not
        open (sealed under another key), which is then computed again."""
        sealed = cast(bytes | None, await self.redis.get(key))
        if sealed is None:
            return None
        try:
            return self.sealer.open(sealed, key)
        except SealedPayloadError:
            log.warning("a cached result does not open with this gateway's payload key")
            return None

    async def depths(self, model_ids: list[str]) -> dict[str, int]:
        """`depth` of each model, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.xlen(keys.job_stream(model_id))
            lengths = await pipe.execute()
        return {model_id: int(n) for model_id, n in zip(model_ids, lengths, strict=True)}

    async def recorded_metrics(self) -> tuple[dict[str, str], dict[str, str]]:
        """What workers recorded: the service's metrics (`keys.METRICS`, laid out as
        `schemas.metrics` says) and their event counters (`keys.STATS`)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.METRICS)
            pipe.hgetall(keys.STATS)
            recorded, events = await pipe.execute()
        return _decoded(recorded), _decoded(events)

    async def spend_rate(self, principal: str, limit_per_minute: int) -> None:
        """Count one request in the caller's last 60 s; RateLimited (not counted) past the limit."""
        now = time.time()
        oldest = await self._spend_rate(
            keys=[keys.rate_window(principal)],
            args=[now, RATE_WINDOW_S, limit_per_minute, uuid.uuid4().hex],
        )
        if oldest is not None:
            raise RateLimited(
                f"This key may send {limit_per_minute} explain requests a minute.",
                retry_after=max(1, math.ceil(float(oldest) + RATE_WINDOW_S - now)),
            )

    async def enqueue(
        self, message: ExplanationJob | VisualizationJob, image: bytes | None, owner: str
    ) -> None:
        """Store the job's record (and image), then queue it: all in one transaction."""
        await self.enqueue_many([(message, image)], owner)

    async def enqueue_many(
        self,
        jobs: Sequence[tuple[ExplanationJob | VisualizationJob, bytes | None]],
        owner: str,
    ) -> None:
        """`enqueue` for several jobs in one transaction: a worker reads them all at once."""
        # The record must outlive a long queue wait plus the result's own lifetime.
        ttl = self.result_ttl_s * 2
        async with self.redis.pipeline(transaction=True) as pipe:
            for message, image in jobs:
                record_key = keys.job_record(message.job_id)
                pipe.hset(record_key, mapping=_record_fields(message, owner, JobState.QUEUED))
                pipe.expire(record_key, ttl)
                if image is not None:
                    image_key = keys.job_image(message.job_id)
                    pipe.set(image_key, self.sealer.seal(image, image_key), ex=ttl)
                pipe.xadd(keys.job_stream(message.model), {"job": message.model_dump_json()})
            await pipe.execute()

    async def store_answered(self, message: ExplanationJob, result_json: str, owner: str) -> None:
        """Record a job that needs no worker (answered from the cache) as succeeded."""
        record_key = keys.job_record(message.job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            fields = _record_fields(message, owner, JobState.SUCCEEDED)
            sealed = self.sealer.seal(
                result_json.encode(), result_field(record_key, JobRecord.RESULT)
            )
            pipe.hset(record_key, mapping={**fields, JobRecord.RESULT: sealed})
            pipe.expire(record_key, self.result_ttl_s)
            await pipe.execute()

    async def record(self, job_id: str, owner: str) -> StoredJob | None:
        """The job's record as stored, its result opened; None for an unknown job or another
        key's job. SealedPayloadError for a result sealed under another key."""
        record_key = keys.job_record(job_id)
        record = cast(dict[bytes, bytes], await self.redis.hgetall(record_key))
        if not record or record.get(JobRecord.OWNER.encode(), b"").decode() != owner:
            return None
        sealed = record.get(JobRecord.RESULT.encode())
        result_json = (
            self.sealer.open(sealed, result_field(record_key, JobRecord.RESULT))
            if sealed is not None
            else None
        )
        return StoredJob(
            job_id=job_id,
            state=JobState(record[JobRecord.STATUS.encode()].decode()),
            model=record[JobRecord.MODEL.encode()].decode(),
            created_at=float(record[JobRecord.CREATED_AT.encode()]),
            result_json=result_json,
            error_json=record.get(JobRecord.ERROR.encode()),
        )

    async def status(self, job_id: str, owner: str) -> JobStatus | None:
        """The job as its owner sees it; None for an unknown job or another key's job."""
        stored = await self.record(job_id, owner)
        return stored.status() if stored is not None else None

    async def cancel(self, job_id: str, owner: str) -> JobState | None:
        """Cancel the job if it is still queued, atomically; the state it was in (`QUEUED`: this
        call cancelled it), or None for an unknown job or another key's job."""
        previous = await self._cancel(
            keys=[keys.job_record(job_id), keys.job_image(job_id)],
            args=[
                JobRecord.STATUS,
                JobRecord.OWNER,
                owner,
                JobState.QUEUED.value,
                JobState.CANCELLED.value,
            ],
        )
        return None if previous is None else JobState(previous.decode())


class CompletionListener:
    """Wakes waiting requests when a worker announces that their job has finished.

    Each gateway process listens on its own channel; jobs carry that channel as `reply_to`.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.channel = keys.gateway_channel(uuid.uuid4().hex)
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="completion-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect(self, job_id: str) -> asyncio.Future[None]:
        """Register before enqueueing, so that no announcement can be missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id] = future
        return future

    def forget(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._subscribed.set()
                    delay = 0.1
                    async for message in pubsub.listen():
                        job_id = message["data"].decode()
                        future = self._waiters.pop(job_id, None)
                        if future is not None and not future.done():
                            future.set_result(None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                # Waiting requests still finish: they re-read the record when their wait ends.
                log.warning("completion listener lost Redis; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def served_or_failed(
    info: ModelInfo | None, failure_json: bytes | None, since: float
) -> ModelInfo | FailedModel | None:
    """What the API says about a model: served wins; a failure reported since `since` stands for a
    model that no live worker serves; a registered model without a worker or failure stays
    listed (as unserved), and a stale failure alone is forgotten."""
    if info is not None and info.live_workers > 0:
        return info
    if failure_json is not None:
        failure = FailedModel.model_validate_json(failure_json)
        if failure.reported_at >= since:
            return failure
    return info


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {field.decode(): value.decode() for field, value in raw.items()}


def _record_fields(
    message: ExplanationJob | VisualizationJob, owner: str, state: JobState
) -> dict[FieldT, EncodableT]:
    """A new job record: its state, the key that owns it, its model and when it was made."""
    return {
        JobRecord.STATUS: state.value,
        JobRecord.OWNER: owner,
        JobRecord.MODEL: message.model,
        JobRecord.CREATED_AT: repr(message.enqueued_at),
    }
