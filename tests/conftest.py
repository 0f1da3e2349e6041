"""Fixtures that build real things: a Redis server, a gateway and worker processes."""

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.devstack import DevStack
from service.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """`REDIS_URL` when set, else a private redis-server for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with PrivateRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """A real uvicorn gateway and a real worker process serving the shipped model repository."""
    logs = tmp_path_factory.mktemp("stack-logs")
    running = DevStack(
        port=free_port(),
        redis_url=redis_url,
        log_dir=logs,
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_MODEL_REPOSITORY": str(ROOT / "models"),
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MAX_BODY_BYTES": str(4 * 1024 * 1024),
        },
    )
    try:
        running.start()
        running.wait_ready(timeout_s=180)
        yield running
    finally:
        running.stop()


@pytest.fixture()
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http
