"""Redis, a gateway and workers as child processes: `make run`, and the integration tests."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError

from schemas import keys
from schemas.models import ModelInfo
from schemas.sealing import KEY_FILE_VARIABLE, write_key_file
from service.redis_connection import sync_redis
from service.redis_server import PrivateRedis

TAIL_LINES = 20  # of a child's output, kept to say why it died


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exit_reason(returncode: int) -> str:
    """`exited with code 2`, or `killed by SIGKILL` for a negative Popen return code."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class ChildOutput:
    """One child's merged stdout and stderr, read line by line on a thread of its own.

    Each line goes to the child's log file (when there is one) and to `echo` (when given), and
    the last `TAIL_LINES` are kept to say why the child died.
    """

    def __init__(
        self,
        name: str,
        stream: IO[bytes],
        log_file: IO[bytes] | None,
        echo: Callable[[str], None] | None,
    ) -> None:
        self.name = name
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._stream, self._log_file, self._echo = stream, log_file, echo
        self._thread = threading.Thread(target=self._forward, name=f"output-{name}", daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        try:
            for raw in self._stream:
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.tail.append(line)
                if self._log_file is not None:
                    self._log_file.write(raw)
                    self._log_file.flush()
                if self._echo is not None:
                    self._echo(f"{self.name:<8} | {line}")
        finally:
            self._stream.close()
            if self._log_file is not None:
                self._log_file.close()

    def finish(self, timeout_s: float = 5.0) -> None:
        """Wait until the child's last line has been read (its end of the pipe is closed)."""
        self._thread.join(timeout_s)


class _Terminal:
    """Prints whole lines from several threads without interleaving them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, line: str, stream: IO[str] | None = None) -> None:
        with self._lock:
            print(line, file=stream or sys.stdout, flush=True)


@dataclass
class DevStack:
    """A running gateway plus workers against one Redis; `stop()` leaves no process behind.

    Each child's output is written to `log_dir/<name>.log` when `log_dir` is set and printed,
    prefixed with the child's name (`gateway`, `worker-0`), when `echo` is set. Without a
    `GLIMPSE_PAYLOAD_KEY_FILE` in `env` or the environment, the stack seals payloads under a
    throwaway key that `stop()` deletes.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    redis_url: str | None = None
    echo: bool = False
    access_log: bool = False
    _redis: PrivateRedis | None = None
    _key_dir: tempfile.TemporaryDirectory[str] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _outputs: dict[int, ChildOutput] = field(default_factory=dict)
    _terminal: _Terminal = field(default_factory=_Terminal)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def redis_pid(self) -> int | None:
        """The process id of the Redis the stack started, if it started one."""
        return self._redis.pid if self._redis is not None else None

    def child_env(self) -> dict[str, str]:
        assert self.redis_url is not None
        # Unbuffered, so that a line shows (and survives a crash) when it is written.
        return {**os.environ, **self.env, "REDIS_URL": self.redis_url, "PYTHONUNBUFFERED": "1"}

    def start(self) -> "DevStack":
        if KEY_FILE_VARIABLE not in {**os.environ, **self.env}:
            self._key_dir = tempfile.TemporaryDirectory(prefix="glimpse-key-")
            key_file = write_key_file(Path(self._key_dir.name) / "payload.key")
            self.env = {**self.env, KEY_FILE_VARIABLE: str(key_file)}
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
        if self.access_log:
            command.append("--access-log")
        return self._spawn(command, "gateway")

    def start_worker(self, index: int = 0) -> subprocess.Popen[bytes]:
        return self._spawn([sys.executable, "-m", "workers.cli"], f"worker-{index}")

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        log_file: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            env=self.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        echo = self._terminal if self.echo else None
        self._outputs[process.pid] = ChildOutput(name, process.stdout, log_file, echo)
        self.processes.append(process)
        return process

    def say(self, text: str, stream: IO[str] | None = None) -> None:
        """Print to the terminal between whole lines of the children's output."""
        self._terminal(text, stream)

    def exit_report(self, process: subprocess.Popen[bytes]) -> str:
        """Which child ended, how, and the last lines it wrote."""
        output = self._outputs[process.pid]
        output.finish()
        reason = exit_reason(process.wait())
        if not output.tail:
            return f"{output.name} {reason} and wrote nothing."
        lines = "\n".join(f"  {line}" for line in output.tail)
        return f"{output.name} {reason}. Its last lines:\n{lines}"

    def first_dead(self) -> subprocess.Popen[bytes] | None:
        """A child that is no longer running, if any."""
        return next((p for p in self.processes if p.poll() is not None), None)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL one child, as a crash would, and stop tracking it."""
        process.kill()
        process.wait()
        self.processes.remove(process)

    def alive(self) -> bool:
        """Every child process is still running."""
        return self.first_dead() is None

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until `/readyz` answers 200.

        RuntimeError if time runs out, or if a child dies: then it names the child, its exit code
        or signal, and carries the last lines of its output.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = self.first_dead()
            if dead is not None:
                raise RuntimeError(self.exit_report(dead))
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout_s:.0f} s")

    @contextlib.contextmanager
    def serving(self, timeout_s: float = 180.0) -> Iterator["DevStack"]:
        """Started and ready for the `with` block; stopped after it, whatever happens."""
        try:
            self.start()
            self.wait_ready(timeout_s=timeout_s)
            yield self
        finally:
            self.stop()

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
        for output in self._outputs.values():
            output.finish()
        self.processes.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._key_dir is not None:
            self._key_dir.cleanup()
            self._key_dir = None


def _devices_by_model(redis_url: str) -> dict[str, set[str]]:
    """The devices that live workers serve each model on, from their self-descriptions."""
    devices: dict[str, set[str]] = {}
    redis = sync_redis(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        since = time.time() - 60
        workers = cast(list[bytes], redis.zrangebyscore(keys.LIVE_WORKERS, since, "+inf"))
        names = [keys.worker_info(worker.decode()) for worker in workers]
        infos = cast(list[bytes | None], redis.mget(names)) if names else []
    except RedisError:
        return devices
    finally:
        redis.close()
    for info in filter(None, infos):
        with contextlib.suppress(TypeError, ValueError, KeyError):
            description = json.loads(info)
            for model_id in description["models"]:
                devices.setdefault(model_id, set()).update(description["device"])
    return devices


def served_models(url: str, redis_url: str, timeout_s: float = 10.0) -> list[str]:
    """One line per model that `GET /v1/models` lists: id, version, format and device."""
    deadline = time.monotonic() + timeout_s
    models: list[ModelInfo] = []
    while not models and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as answer:
                models = TypeAdapter(list[ModelInfo]).validate_json(answer.read())
        except urllib.error.HTTPError as exc:
            return [f"  (GET /v1/models answered {exc.code}: {exc.reason})"]
        except (urllib.error.URLError, OSError, ValidationError) as exc:
            return [f"  (GET /v1/models failed: {exc})"]
        if not models:
            time.sleep(0.2)
    devices = _devices_by_model(redis_url)
    width = max((len(info.id) for info in models), default=0)
    return [
        f"  {info.id:<{width}}  version {info.version}  {info.format}"
        f"  on {', '.join(sorted(devices.get(info.id, set()))) or 'an unknown device'}"
        for info in models
    ] or ["  (no model registered)"]


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_dev_stack() -> int:
    """`glimpse run`: everything on this machine, authentication off, until Ctrl-C.

    The children's output is shown prefixed with their names; when one dies, the run says which,
    how and its last lines, stops the others and exits 1.
    """
    settings_env = {
        "GLIMPSE_AUTH": os.environ.get("GLIMPSE_AUTH", "off"),
        # The children write to pipes, not to the terminal the run shows their lines on.
        "GLIMPSE_LOG_FORMAT": os.environ.get("GLIMPSE_LOG_FORMAT", "text"),
    }
    port = int(os.environ.get("GLIMPSE_PORT", "8000"))
    stack = DevStack(
        port=port,
        env=settings_env,
        redis_url=os.environ.get("REDIS_URL"),
        echo=True,
        access_log=True,
    )
    # Ctrl-C and SIGTERM both stop everything, even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        assert stack.redis_url is not None
        stack.say(f"Redis: {stack.redis_url}")
        if settings_env["GLIMPSE_AUTH"].lower() in ("off", "false", "0", "no"):
            stack.say("Authentication is OFF for this development run (GLIMPSE_AUTH=off).")
        stack.say("Loading models…")
        stack.wait_ready(timeout_s=300)
        models = served_models(stack.url, stack.redis_url)
        stack.say("Models:\n" + "\n".join(models))
        stack.say(f"Glimpse is ready.\n  demo page: {stack.url}/\n  API docs:  {stack.url}/docs")
        stack.say("Press Ctrl-C to stop.")
        while (dead := stack.first_dead()) is None:
            time.sleep(0.5)
        stack.say(f"{stack.exit_report(dead)}\nStopping.", sys.stderr)
        return 1
    except RuntimeError as exc:
        stack.say(f"Glimpse did not start: {exc}\nStopping.", sys.stderr)
        return 1
    except KeyboardInterrupt:
        stack.say("\nStopping…")
        return 0
    finally:
        stack.stop()
