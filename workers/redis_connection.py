"""The worker's Redis client, from `REDIS_URL`: one server's URL, or a Sentinel URL
(`schemas.redis_address`) whose client asks the Sentinels for the primary on every new
connection, so that it follows the primary through a failover."""

from typing import Any

from redis import Redis
from redis.sentinel import Sentinel

from schemas.redis_address import sentinel_address


def worker_redis(url: str, **options: Any) -> Redis:
    """A client of the Redis primary `url` names; `options` as `redis.Redis` takes them."""
    address = sentinel_address(url)
    if address is None:
        return Redis.from_url(url, **options)
    sentinels = Sentinel(list(address.sentinels), sentinel_kwargs=address.sentinel_options())
    return sentinels.master_for(address.primary, **address.primary_options(), **options)
