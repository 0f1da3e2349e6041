"""The worker's side of the queue: claim jobs, store outcomes, announce them, beat the heart."""

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.typing import KeyT, StreamIdT

from schemas import keys
from schemas.jobs import JobRecord, JobState
from schemas.metrics import CounterSpec, HistogramSpec
from schemas.models import FailedModel, ModelInfo
from schemas.sealing import PayloadSealer, result_field

# Runs atomically: a job is claimed only while queued or running (a redelivery after a crash).
_CLAIM = """
local status = redis.call('HGET', KEYS[1], ARGV[1])
if status ~= ARGV[2] and status ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
"""

# Stores an outcome once, even when a job was computed twice; always acknowledges the entry.
# Announces it on the channel the record names (a retried request's gateway), else on reply_to's.
_COMPLETE = """
local status = redis.call('HGET', KEYS[1], ARGV[1])
local reply_to = redis.call('HGET', KEYS[1], ARGV[12]) or ARGV[10]
local stored = 0
if status == ARGV[2] or status == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4], ARGV[5], ARGV[6])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  stored = 1
end
redis.call('XACK', KEYS[2], ARGV[8], ARGV[9])
redis.call('XDEL', KEYS[2], ARGV[9])
redis.call('DEL', KEYS[3])
if reply_to ~= '' then redis.call('PUBLISH', reply_to, ARGV[11]) end
return stored
"""


# Runs atomically: resets the idle time of the given entries this consumer still holds, so that
# an entry another worker has taken over (after this one stalled) is never taken back.
_EXTEND = """
local extended = 0
for i = 3, #ARGV do
  local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #held > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    extended = extended + 1
  end
end
return extended
"""

# Deletes a consumer only while it holds no pending entries, checked and done in one step.
_FORGET_CONSUMER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class StreamJob:
    """A job as the stream delivered it: its model's stream, the entry, the job, and the channel
    of the gateway waiting for it (None when no one waits)."""

    model_id: str
    entry_id: str
    job_id: str
    reply_to: str | None


class JobStore:
    """Redis operations of one worker, with the key names from `schemas.keys`; images and
    results are stored sealed by `sealer` (`schemas.sealing`)."""

    def __init__(
        self, redis: Redis, worker_id: str, result_ttl_s: int, sealer: PayloadSealer
    ) -> None:
        self.redis = redis
        self.sealer = sealer
        self.worker_id = worker_id
        # Results and cached results alike: nothing a job produced outlives this.
        self.result_ttl_s = result_ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._complete = redis.register_script(_COMPLETE)
        self._extend = redis.register_script(_EXTEND)
        self._forget = redis.register_script(_FORGET_CONSUMER)

    def register_models(
        self, infos: Sequence[ModelInfo], failures: Sequence[FailedModel] = ()
    ) -> None:
        """Create each served model's consumer group and publish what the gateway says about it,
        and publish the model folders that failed to load.

        A model served here clears a failure another worker (or this one, before its folder was
        fixed) reported; the gateway ignores a failure while a live worker serves the model, and
        once no worker has reported it for longer than it waits for a heartbeat.
        Idempotent, and repeated with every heartbeat, so that a Redis that lost its data
        (restarted without persistence) learns the models and groups again by itself.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            for info in infos:
                pipe.xgroup_create(
                    keys.job_stream(info.id), keys.CONSUMER_GROUP, id="0", mkstream=True
                )
                pipe.hset(keys.MODEL_REGISTRY, info.id, info.model_dump_json())
                pipe.hdel(keys.MODEL_FAILURES, info.id)
            for failure in failures:
                pipe.hset(keys.MODEL_FAILURES, failure.id, failure.model_dump_json())
            for outcome in pipe.execute(raise_on_error=False):
                # BUSYGROUP: the group exists already, which is the usual case.
                if isinstance(outcome, Exception) and "BUSYGROUP" not in str(outcome):
                    raise outcome

    def count(self, event: str, amount: int = 1) -> None:
        """Add to one of the service's event counters (`keys.STATS`), read by the gateway."""
        self.redis.hincrby(keys.STATS, event, amount)

    def record(
        self,
        observations: Sequence[tuple[HistogramSpec, str, float]],
        events: Sequence[tuple[CounterSpec, str]] = (),
    ) -> None:
        """Add observations (histogram, label value, value) and counter events (counter, label
        value) to the service's metrics (`keys.METRICS`), in one round trip.

        Summed here first, so that a batch sends each field once, not once per observation.
        """
        counts: Counter[str] = Counter()
        sums: defaultdict[str, float] = defaultdict(float)
        for histogram, label_value, value in observations:
            buckets, sum_field, count_field = histogram.fields(label_value, value)
            counts.update(buckets)
            counts[count_field] += 1
            sums[sum_field] += value
        counts.update(counter.field(label_value) for counter, label_value in events)
        with self.redis.pipeline(transaction=False) as pipe:
            for field, count in counts.items():
                pipe.hincrby(keys.METRICS, field, count)
            for field, total in sums.items():
                pipe.hincrbyfloat(keys.METRICS, field, total)
            pipe.execute()

    def heartbeat(self, model_ids: list[str], description: str) -> None:
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.LIVE_WORKERS, {self.worker_id: now})
            for model_id in model_ids:
                pipe.zadd(keys.model_workers(model_id), {self.worker_id: now})
            pipe.set(keys.worker_info(self.worker_id), description, ex=60)
            pipe.execute()

    def sign_off(self, model_ids: list[str]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.LIVE_WORKERS, self.worker_id)
            for model_id in model_ids:
                pipe.zrem(keys.model_workers(model_id), self.worker_id)
            pipe.delete(keys.worker_info(self.worker_id))
            pipe.execute()
        for model_id in model_ids:
            self._forget_consumer(model_id, self.worker_id)

    def forget_idle_consumers(self, model_ids: list[str], min_idle_ms: int) -> int:
        """Remove from each model's group the consumers (workers that died or left) that hold no
        entries and have not read for `min_idle_ms`; how many were removed."""
        removed = 0
        for model_id in model_ids:
            consumers = cast(
                list[dict[str, Any]],
                self.redis.xinfo_consumers(keys.job_stream(model_id), keys.CONSUMER_GROUP),
            )
            for consumer in consumers:
                name = consumer["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                idle_ms = int(consumer.get("inactive", consumer["idle"]))
                if name != self.worker_id and consumer["pending"] == 0 and idle_ms > min_idle_ms:
                    removed += self._forget_consumer(model_id, name)
        return removed

    def _forget_consumer(self, model_id: str, consumer: str) -> int:
        """Delete `consumer` from the model's group unless it holds entries (which a live worker
        will take over); 1 if it was deleted."""
        return int(
            self._forget(keys=[keys.job_stream(model_id)], args=[keys.CONSUMER_GROUP, consumer])
        )

    def read(
        self, model_ids: list[str], count: int, block_ms: int | None
    ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """New entries for this worker: (model id, entry id, fields); `block_ms` None: no wait."""
        streams: dict[KeyT, StreamIdT] = {keys.job_stream(m): ">" for m in model_ids}
        answer = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]] | None,
            self.redis.xreadgroup(
                keys.CONSUMER_GROUP, self.worker_id, streams, count=count, block=block_ms
            ),
        )
        return [
            (_model_of(stream), entry_id.decode(), fields)
            for stream, entries in answer or []
            for entry_id, fields in entries
            if fields is not None
        ]

    def claim_stale(
        self, model_ids: list[str], min_idle_ms: int, count: int
    ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """Take over entries a dead worker left unacknowledged for longer than `min_idle_ms`."""
        claimed: list[tuple[str, str, dict[bytes, bytes]]] = []
        for model_id in model_ids:
            _, entries, *_ = cast(
                list[Any],
                self.redis.xautoclaim(
                    keys.job_stream(model_id),
                    keys.CONSUMER_GROUP,
                    self.worker_id,
                    min_idle_time=min_idle_ms,
                    start_id="0-0",
                    count=count,
                ),
            )
            claimed.extend(
                (model_id, entry_id.decode(), fields)
                for entry_id, fields in entries
                if fields is not None
            )
        return claimed

    def extend_leases(self, entries: Sequence[tuple[str, str]]) -> int:
        """Reset the idle time of entries (model id, entry id) this worker is computing, so
        that `claim_stale` elsewhere leaves them alone; how many it still held."""
        by_model: defaultdict[str, list[str]] = defaultdict(list)
        for model_id, entry_id in entries:
            by_model[model_id].append(entry_id)
        return sum(
            int(
                self._extend(
                    keys=[keys.job_stream(model_id)],
                    args=[keys.CONSUMER_GROUP, self.worker_id, *entry_ids],
                )
            )
            for model_id, entry_ids in by_model.items()
        )

    def claim(self, job_id: str) -> int:
        """Mark the job running; its delivery count, or -1 when it is no longer to be run."""
        return int(
            self._claim(
                keys=[keys.job_record(job_id)],
                args=[JobRecord.STATUS, JobState.QUEUED.value, JobState.RUNNING.value],
            )
        )

    def cache(self, key: str, result_json: str) -> None:
        """Keep a deterministic result for identical requests to reuse."""
        self.redis.set(key, self.sealer.seal(result_json.encode(), key), ex=self.result_ttl_s)

    def image(self, job_id: str) -> bytes | None:
        """The job's image, opened; SealedPayloadError if it was sealed under another key."""
        image_key = keys.job_image(job_id)
        sealed = cast(bytes | None, self.redis.get(image_key))
        return self.sealer.open(sealed, image_key) if sealed is not None else None

    def complete(
        self,
        job: StreamJob,
        *,
        result_json: str | None = None,
        error_json: str | None = None,
    ) -> bool:
        """Store the result or the error, acknowledge, announce. False if already stored."""
        payload: bytes | str
        if result_json is not None:
            state, field = JobState.SUCCEEDED, JobRecord.RESULT
            record_key = keys.job_record(job.job_id)
            payload = self.sealer.seal(result_json.encode(), result_field(record_key, field))
        else:
            # A problem's text is the service's own, never the image's or the scores: in clear.
            assert error_json is not None
            state, field, payload = JobState.FAILED, JobRecord.ERROR, error_json
        return self.finish(job, state, field, payload)

    def discard(self, model_id: str, entry_id: str, job_id: str) -> None:
        """Acknowledge an entry whose job was cancelled or already finished."""
        job = StreamJob(model_id, entry_id, job_id, reply_to=None)
        self.finish(job, JobState.CANCELLED, JobRecord.ERROR, "")

    def drop(self, model_id: str, entry_id: str) -> None:
        """Acknowledge and delete an entry that names no job."""
        stream = keys.job_stream(model_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream, keys.CONSUMER_GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            pipe.execute()

    def finish(self, job: StreamJob, state: JobState, field: str, payload: bytes | str) -> bool:
        """End `job` in `state` with `payload` in `field`, unless it already ended: False then."""
        stored = self._complete(
            keys=[
                keys.job_record(job.job_id),
                keys.job_stream(job.model_id),
                keys.job_image(job.job_id),
            ],
            args=[
                JobRecord.STATUS,
                JobState.QUEUED.value,
                JobState.RUNNING.value,
                state.value,
                field,
                payload,
                self.result_ttl_s,
                keys.CONSUMER_GROUP,
                job.entry_id,
                job.reply_to or "",
                job.job_id,
                JobRecord.REPLY_TO,
            ],
        )
        return bool(stored)


def _model_of(stream: bytes) -> str:
    return stream.decode().removeprefix(keys.job_stream(""))
