"""The per-key concurrency limit against a real Redis."""

import asyncio

import pytest
from redis.asyncio import Redis

from schemas import keys
from schemas.jobs import JobRecord, JobState
from service.concurrency import RESERVATION_GRACE_S, ConcurrencyLimit
from service.errors import RateLimited


def test_a_key_holds_at_most_its_limit_and_finished_jobs_free_their_slots(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        limit = ConcurrencyLimit(redis, 2, ttl_s=60, retry_after_s=3)
        for job_id in ("a", "b"):
            await redis.hset(keys.job_record(job_id), JobRecord.STATUS, JobState.QUEUED.value)
        await limit.reserve("alice", ["a", "b"])

        with pytest.raises(RateLimited) as refused:
            await limit.reserve("alice", ["c"])
        assert refused.value.retry_after == 3
        await limit.reserve("bob", ["d"])  # another key has its own slots

        await redis.hset(keys.job_record("a"), JobRecord.STATUS, JobState.SUCCEEDED.value)
        await limit.reserve("alice", ["c"])
        with pytest.raises(RateLimited):
            await limit.reserve("alice", ["e"])

        # A reservation whose job record never appeared (a failed enqueue) expires.
        stale = await redis.zscore(keys.active_jobs("alice"), "c")
        assert stale is not None
        await redis.zadd(keys.active_jobs("alice"), {"c": stale - RESERVATION_GRACE_S - 1})
        await limit.reserve("alice", ["e"])
        await redis.aclose()

    asyncio.run(scenario())


def test_no_limit_reserves_nothing(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        await ConcurrencyLimit(redis, 0, ttl_s=60, retry_after_s=1).reserve("carol", ["x"])
        assert await redis.exists(keys.active_jobs("carol")) == 0
        await redis.aclose()

    asyncio.run(scenario())
