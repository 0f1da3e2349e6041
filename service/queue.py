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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from schemas import keys
from schemas.jobs import ExplanationJob, JobRecord, JobState, JobStatus, VisualizationJob
from schemas.models import FailedModel, ModelInfo
from schemas.sealing import PayloadSealer, SealedPayloadError, result_field
from service.errors import QueueFull, RateLimited
from service.idempotency import IdempotencyKeyReused, IdempotentRequest

log = logging.getLogger(__name__)


RATE_WINDOW_S = 60
AMBIGUITY_RECHECK_S = 3.0
"""How long, after an ambiguous Redis error, the gateway keeps asking whether the job exists."""
# How long an admission waits for its replicas (`replica_acks`) before it is answered anyway.
REPLICA_ACK_TIMEOUT_MS = 1000

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


_FULL, _REPLAYED, _ADMITTED = "full", "replayed", b"admitted"

# Admits a request's jobs, all or none. KEYS: the model's stream, the request's idempotency entry
# (the stream again when it has none), each job's record, each job's image. ARGV: the queue limit,
# the TTL of a queued job's record and image, that of an answered job's record, the request's
# digest ('' without an idempotency key), the number of jobs, the result's field name, the job ids
# (space-separated); then for each job: its record fields (JSON), its answer ('' when it is to be
# computed), its stream message ('' for an answered job), '1' if it has an image, the image.
# Returns {'replayed', digest, job ids} for a key used before, {'full', depth} when the stream
# cannot take the jobs to be computed, else {'admitted'}.
_ENQUEUE = """
local n = tonumber(ARGV[5])
if ARGV[4] ~= '' then
  local entry = redis.call('HMGET', KEYS[2], 'digest', 'jobs')
  if entry[1] then return {'replayed', entry[1], entry[2]} end
end
-- A call re-sent after a lost reply finds its own first record: it ran already.
if redis.call('EXISTS', KEYS[3]) == 1 then return {'admitted'} end
local queued = 0
for i = 1, n do
  if ARGV[7 + (i - 1) * 5 + 3] ~= '' then queued = queued + 1 end
end
if queued > 0 then
  local depth = redis.call('XLEN', KEYS[1])
  if depth + queued > tonumber(ARGV[1]) then return {'full', depth} end
end
for i = 1, n do
  local base = 7 + (i - 1) * 5
  local record = KEYS[2 + i]
  local fields = {}
  for name, value in pairs(cjson.decode(ARGV[base + 1])) do
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
  redis.call('HSET', record, unpack(fields))
  if ARGV[base + 3] == '' then
    redis.call('HSET', record, ARGV[6], ARGV[base + 2])
    redis.call('EXPIRE', record, ARGV[3])
  else
    redis.call('EXPIRE', record, ARGV[2])
    if ARGV[base + 4] == '1' then
      redis.call('SET', KEYS[2 + n + i], ARGV[base + 5], 'EX', ARGV[2])
    end
    redis.call('XADD', KEYS[1], '*', 'job', ARGV[base + 3])
  end
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'digest', ARGV[4], 'jobs', ARGV[7])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return {'admitted'}
"""

# Points the outcome announcement of existing jobs at another gateway's channel.
_REDIRECT = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], ARGV[1], ARGV[2]) end
end
"""


@dataclass(frozen=True)
class NewJob:
    """A job to admit: queued for a worker, or `answer`ed already (from the result cache)."""

    message: ExplanationJob | VisualizationJob
    image: bytes | None = None
    answer: str | None = None

    @property
    def state(self) -> JobState:
        return JobState.QUEUED if self.answer is None else JobState.SUCCEEDED


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

    def __init__(  # noqa: PLR0913 - keyword-only settings, each given once from Settings
        self,
        redis: Redis,
        *,
        sealer: PayloadSealer,
        result_ttl_s: int,
        worker_timeout_s: float,
        retry_after_s: int = 2,
        replica_acks: int = 0,
    ) -> None:
        self.redis = redis
        self.replica_acks = replica_acks
        self.sealer = sealer
        self.result_ttl_s = result_ttl_s
        # A record must outlive a long queue wait plus the result's own lifetime.
        self.record_ttl_s = result_ttl_s * 2
        self.worker_timeout_s = worker_timeout_s
        self.retry_after_s = retry_after_s
        self._spend_rate = redis.register_script(_SPEND_RATE)
        self._cancel = redis.register_script(_CANCEL)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._redirect = redis.register_script(_REDIRECT)

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
        self,
        jobs: Sequence[NewJob],
        owner: str,
        *,
        queue_limit: int,
        idempotent: IdempotentRequest | None = None,
    ) -> list[str]:
        """Store the jobs' records (and images) and queue those without an answer, all or none,
        in one atomic step that also holds the model's queue to `queue_limit` and remembers the
        request under its `Idempotency-Key`. All jobs are of one model.

        Returns the ids of the request's jobs: these, or, for a request whose key admitted it
        before, that request's (then redirected to this request's `reply_to`).
        QueueFull when the model's stream cannot take the new entries; IdempotencyKeyReused for
        a key that admitted a different request. On a Redis error the enqueue may or may not
        have run: it is taken as done when the first job's record exists, else re-raised.
        """
        assert jobs and len({job.message.model for job in jobs}) == 1
        model = jobs[0].message.model
        job_ids = [job.message.job_id for job in jobs]
        ttl = self.record_ttl_s
        args: list[EncodableT] = [
            queue_limit,
            ttl,
            self.result_ttl_s,
            idempotent.digest if idempotent else "",
            len(jobs),
            JobRecord.RESULT,
            " ".join(job_ids),
        ]
        for job in jobs:
            fields = _record_fields(job.message, owner, job.state)
            record_key = keys.job_record(job.message.job_id)
            image_key = keys.job_image(job.message.job_id)
            # Sealed here, under the keys they are stored at: the script sees ciphertext only.
            args += [
                json.dumps(fields),
                ""
                if job.answer is None
                else self.sealer.seal(
                    job.answer.encode(), result_field(record_key, JobRecord.RESULT)
                ),
                "" if job.answer is not None else job.message.model_dump_json(),
                "0" if job.image is None else "1",
                b"" if job.image is None else self.sealer.seal(job.image, image_key),
            ]
        stream = keys.job_stream(model)
        script_keys = [
            stream,
            idempotent.redis_key if idempotent else stream,
            *(keys.job_record(job_id) for job_id in job_ids),
            *(keys.job_image(job_id) for job_id in job_ids),
        ]
        try:
            if self.replica_acks:
                # One connection for both: WAIT counts the replicas holding its own writes.
                async with self.redis.client() as connection:
                    outcome = await self._enqueue(keys=script_keys, args=args, client=connection)
                    if outcome[0] == _ADMITTED:
                        await self._await_replicas(connection)
            else:
                # The pool's connection: a client of its own per request would cost a tenth
                # of an admission.
                outcome = await self._enqueue(keys=script_keys, args=args)
        except (RedisConnectionError, RedisTimeoutError):
            if await self._enqueued_after_all(job_ids[0]):
                return job_ids
            raise
        verdict = outcome[0].decode()
        if verdict == _FULL:
            depth = int(outcome[1])
            adding = sum(job.answer is None for job in jobs)
            raise QueueFull(
                f"{model!r} has {depth} of at most {queue_limit} jobs waiting"
                + (f"; this request brings {adding}." if adding > 1 else "."),
                retry_after=self.retry_after_s,
            )
        if verdict == _REPLAYED:
            if outcome[1].decode() != (idempotent.digest if idempotent else ""):
                raise IdempotencyKeyReused()
            first_ids = outcome[2].decode().split()
            reply_to = jobs[0].message.reply_to
            if reply_to is not None:
                await self._redirect(
                    keys=[keys.job_record(job_id) for job_id in first_ids],
                    args=[JobRecord.REPLY_TO, reply_to],
                )
            return first_ids
        return job_ids

    async def _await_replicas(self, connection: Redis) -> None:
        """Wait until `replica_acks` replicas hold what `connection` wrote; short of them within
        REPLICA_ACK_TIMEOUT_MS, the jobs stand (the primary has them) and a warning says so."""
        acked = int(await connection.wait(self.replica_acks, REPLICA_ACK_TIMEOUT_MS))
        if acked < self.replica_acks:
            log.warning(
                "jobs admitted with %d of %d Redis replicas holding them: a failover loses them",
                acked,
                self.replica_acks,
            )

    async def _enqueued_after_all(self, job_id: str) -> bool:
        """After an ambiguous error, whether the enqueue ran: asked again while Redis is still
        unreachable, for up to `AMBIGUITY_RECHECK_S`, so that a brief outage (a restart, a
        failover) does not answer 503 for a job that exists. False when it cannot tell."""
        deadline = time.monotonic() + AMBIGUITY_RECHECK_S
        delay = 0.05
        while True:
            try:
                return await self.exists(job_id)
            except (RedisConnectionError, RedisTimeoutError):
                if time.monotonic() + delay > deadline:
                    return False
                await asyncio.sleep(delay)
                delay *= 2

    async def exists(self, job_id: str) -> bool:
        """Whether the job has a record: after an ambiguous error, whether its enqueue ran.

        A Redis error here (Redis still unreachable) is the caller's: it cannot tell either."""
        return bool(await self.redis.exists(keys.job_record(job_id)))

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
        if self._task is None:
            return
        # redis-py can swallow a cancellation that lands in its read (the task then listens on,
        # and a gateway's shutdown waits for ever), so it is cancelled until it ends.
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.1)
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
) -> dict[str, str]:
    """A new job record: its state, the key that owns it, its model and when it was made."""
    return {
        JobRecord.STATUS: state.value,
        JobRecord.OWNER: owner,
        JobRecord.MODEL: message.model,
        JobRecord.CREATED_AT: repr(message.enqueued_at),
    }
