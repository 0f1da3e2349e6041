"""Redis, a gateway and workers as child processes: `make run`, and the integration tests."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from service.redis_server import PrivateRedis


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DevStack:
    """A running gateway plus workers against one Redis; `stop()` leaves no process behind."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    redis_url: str | None = None
    _redis: PrivateRedis | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def child_env(self) -> dict[str, str]:
        assert self.redis_url is not None
        return {**os.environ, **self.env, "REDIS_URL": self.redis_url}

    def start(self) -> "DevStack":
        if self.redis_url is None:
            self._redis = PrivateRedis().start()
            self.redis_url = self._redis.url
        for index in range(self.workers):
            self.start_worker(index)
        self.start_gateway()
        return self

    def start_gateway(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        return self._spawn(command, "gateway")

    def start_worker(self, index: int = 0) -> subprocess.Popen[bytes]:
        return self._spawn([sys.executable, "-m", "workers.cli"], f"worker-{index}")

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        output: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            env=self.child_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL one child, as a crash would, and stop tracking it."""
        process.kill()
        process.wait()
        self.processes.remove(process)

    def alive(self) -> bool:
        """Every child process is still running."""
        return all(process.poll() is None for process in self.processes)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until `/readyz` answers 200; RuntimeError if a child dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a process exited early: {dead[0].args!r}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt


def run_dev_stack() -> int:
    """`glimpse run`: everything on this machine, authentication off, until Ctrl-C."""
    settings_env = {"GLIMPSE_AUTH": os.environ.get("GLIMPSE_AUTH", "off")}
    port = int(os.environ.get("GLIMPSE_PORT", "8000"))
    stack = DevStack(port=port, env=settings_env, redis_url=os.environ.get("REDIS_URL"))
    # Ctrl-C and SIGTERM both stop everything, even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        print(f"Redis: {stack.redis_url}", flush=True)
        if settings_env["GLIMPSE_AUTH"].lower() in ("off", "false", "0", "no"):
            print("Authentication is OFF for this development run (GLIMPSE_AUTH=off).", flush=True)
        print("Loading models…", flush=True)
        stack.wait_ready(timeout_s=300)
        print(f"Glimpse is ready.\n  demo page: {stack.url}/\n  API docs:  {stack.url}/docs")
        print("Press Ctrl-C to stop.", flush=True)
        while stack.alive():
            time.sleep(0.5)
        print("A process exited; stopping.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
        return 0
    finally:
        stack.stop()
