"""Consumers of workers that are gone leave the consumer groups (`workers/store.py`)."""

import os
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from schemas import keys
from schemas.sealing import PayloadSealer
from workers.store import JobStore

MODEL = "consumers-model"
SEALER = PayloadSealer(os.urandom(32))


@pytest.fixture()
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    stream = keys.job_stream(MODEL)
    client.delete(stream)
    client.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
    yield client
    client.delete(stream)
    client.close()


def consumers(redis: Redis) -> dict[str, int]:
    """Each consumer of the model's group with its pending entries."""
    return {
        c["name"].decode(): c["pending"]
        for c in redis.xinfo_consumers(keys.job_stream(MODEL), keys.CONSUMER_GROUP)
    }


def deliver(redis: Redis, consumer: str, acknowledge: bool) -> None:
    stream = keys.job_stream(MODEL)
    redis.xadd(stream, {"job": consumer})
    ((_, [(entry_id, _)]),) = redis.xreadgroup(
        keys.CONSUMER_GROUP, consumer, {stream: ">"}, count=1
    )
    if acknowledge:
        redis.xack(stream, keys.CONSUMER_GROUP, entry_id)


def test_a_worker_that_signs_off_leaves_the_group_unless_it_holds_entries(redis: Redis) -> None:
    deliver(redis, "leaving", acknowledge=True)
    deliver(redis, "crashing", acknowledge=False)
    JobStore(redis, "leaving", result_ttl_s=60, sealer=SEALER).sign_off([MODEL])
    JobStore(redis, "crashing", result_ttl_s=60, sealer=SEALER).sign_off([MODEL])
    # The entry it still holds is taken over after the visibility timeout; then it may go.
    assert consumers(redis) == {"crashing": 1}


def test_live_workers_remove_idle_consumers_that_hold_nothing(redis: Redis) -> None:
    deliver(redis, "dead-idle", acknowledge=True)
    deliver(redis, "dead-holding", acknowledge=False)
    deliver(redis, "live", acknowledge=True)
    live = JobStore(redis, "live", result_ttl_s=60, sealer=SEALER)
    assert live.forget_idle_consumers([MODEL], min_idle_ms=60_000) == 0
    assert set(consumers(redis)) == {"dead-idle", "dead-holding", "live"}

    time.sleep(0.2)
    assert live.forget_idle_consumers([MODEL], min_idle_ms=100) == 1
    assert consumers(redis) == {"dead-holding": 1, "live": 0}
