"""The gateway's Redis clients find the primary through real Sentinels, or use one server's URL."""

import asyncio
from pathlib import Path

from sentinel_support import SentinelGroup  # type: ignore[import-not-found]

from service.redis_connection import gateway_redis, sync_redis
from service.redis_server import PrivateRedis


def test_both_clients_reach_the_primary_the_sentinels_name(tmp_path: Path) -> None:
    with SentinelGroup(tmp_path) as group:
        written = sync_redis(group.url, socket_connect_timeout=1)
        written.set("written-by", "sync")
        assert written.info("server")["tcp_port"] == group.primary_port

        async def read_back() -> tuple[bytes | None, int]:
            client = gateway_redis(group.url, socket_connect_timeout=1)
            try:
                return await client.get("written-by"), (await client.info("server"))["tcp_port"]
            finally:
                await client.aclose()

        assert asyncio.run(read_back()) == (b"sync", group.primary_port)
        written.close()


def test_a_single_servers_url_is_used_as_it_is() -> None:
    with PrivateRedis() as server:
        client = sync_redis(server.url)
        assert client.info("server")["tcp_port"] == server.port
        client.close()

        async def port() -> int:
            client = gateway_redis(server.url)
            try:
                return int((await client.info("server"))["tcp_port"])
            finally:
                await client.aclose()

        assert asyncio.run(port()) == server.port
