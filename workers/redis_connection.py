"""The worker's Redis client, from `REDIS_URL`: one server's URL, or a Sentinel URL
(`schemas.redis_address`) whose client asks the Sentinels for the primary on every new
connection, so that it follows the primary through a failover."""

from typing import Any

from redis import Redis
from redis.sentinel import Sentinel

from schemas.redis_address import SENTINEL_TIMEOUT_S, sentinel_address


def worker_redis(url: str, **options: Any) -> Redis:
    """A client of the Redis primary `url` names; `options` as `redis.Redis` takes them."""
    address = sentinel_address(url)
    if address is None:
        return Redis.from_url(url, **options)
    sentinels = Sentinel(
        list(address.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "socket_timeout": SENTINEL_TIMEOUT_S,
        },
    )
    return sentinels.master_for(
        address.primary,
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
    )
