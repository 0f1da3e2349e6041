"""The gateway's Redis clients, from `REDIS_URL`: one server's URL, or a Sentinel URL
(`schemas.redis_address`) whose clients ask the Sentinels for the primary on every new
connection, so that they follow it through a failover."""

from typing import Any

import redis
from redis import asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from schemas.redis_address import sentinel_address


def gateway_redis(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client of the Redis primary `url` names; `options` as `redis.asyncio.Redis`
    takes them (timeouts, health checks)."""
    address = sentinel_address(url)
    if address is None:
        return aioredis.Redis.from_url(url, **options)
    sentinels = AsyncSentinel(list(address.sentinels), sentinel_kwargs=address.sentinel_options())
    return sentinels.master_for(address.primary, **address.primary_options(), **options)


def sync_redis(url: str, **options: Any) -> redis.Redis:
    """A blocking client of the same primary, for the development stack's own look-ups."""
    address = sentinel_address(url)
    if address is None:
        return redis.Redis.from_url(url, **options)
    sentinels = Sentinel(list(address.sentinels), sentinel_kwargs=address.sentinel_options())
    return sentinels.master_for(address.primary, **address.primary_options(), **options)
