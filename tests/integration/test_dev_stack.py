"""`glimpse run` (what `make run` starts): ready, announced, and gone without a trace on Ctrl-C.

It shows each process's output prefixed with its name, the models it serves, a line per request,
and when a process dies: which one, how, and its last lines.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from schemas.sealing import KEY_FILE_VARIABLE
from service.devstack import DevStack, free_port

ROOT = Path(__file__).resolve().parents[2]


def processes_tagged(tag: str) -> list[int]:
    """PIDs whose environment carries `tag`: the run and every child it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Run:
    """A `glimpse run` subprocess in a session of its own, as a terminal would start it."""

    def __init__(self, **env: str) -> None:
        self.tag = f"GLIMPSE_RUN_TAG={uuid.uuid4().hex}"
        self.port = free_port()
        # Neither Redis nor a payload key: `glimpse run` starts its own Redis and a throwaway key.
        child_env = {
            k: v for k, v in os.environ.items() if k not in ("REDIS_URL", KEY_FILE_VARIABLE)
        }
        child_env.update(
            GLIMPSE_PORT=str(self.port),
            GLIMPSE_DEVICE="cpu",
            GLIMPSE_MODEL_REPOSITORY=str(ROOT / "models"),
            GLIMPSE_RUN_TAG=self.tag.split("=", 1)[1],
        )
        child_env.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "run"],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def read_until(self, marker: str, timeout_s: float = 180) -> str:
        """The output up to the first line holding `marker`; fails if the run ends first."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            assert line, f"glimpse run ended before {marker!r}:\n{self.output}"
            self.lines.append(line)
            if marker in line:
                return self.output
        pytest.fail(f"no {marker!r} after {timeout_s:.0f} s:\n{self.output}")

    def finish(self, timeout_s: float = 60) -> int:
        """Wait for the run to end, keeping the rest of its output; its exit status."""
        rest, _ = self.process.communicate(timeout=timeout_s)
        self.lines.append(rest)
        return self.process.returncode

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 10
        while processes_tagged(self.tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_tagged(self.tag) == []

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def glimpse_run(**env: str) -> Iterator[Run]:
    run = Run(**env)
    try:
        yield run
    finally:
        run.kill()


def test_run_starts_everything_and_ctrl_c_stops_it_all() -> None:
    with glimpse_run() as run:
        output = run.read_until("Press Ctrl-C")
        assert "Authentication is OFF" in output
        assert f"http://127.0.0.1:{run.port}/" in output and "/docs" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/readyz", timeout=5) as answer:
            assert answer.status == 200
        # The run, the gateway and a worker; Redis rewrites its environment block as its title.
        assert len(processes_tagged(run.tag)) >= 3
        redis_port = int(output.split("Redis: redis://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert port_is_open(redis_port)

        os.killpg(run.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert run.finish() == 0
        run.assert_nothing_left()
        assert not port_is_open(redis_port)


def test_run_shows_each_process_output_the_models_and_the_requests() -> None:
    with glimpse_run() as run:
        output = run.read_until("Press Ctrl-C")
        assert re.search(r"^gateway  \| .*Uvicorn running on", output, re.MULTILINE), output
        assert re.search(r"^worker-0 \| .+", output, re.MULTILINE), output
        assert re.search(
            r"^Models:\n  demo-lesions +version 1 +safetensors +on cpu$", output, re.MULTILINE
        ), output
        # One line per request, with its id, but not for the health probes that poll the gateway.
        assert re.search(
            r'^gateway  \| .*"GET /v1/models HTTP/1.1" 200 .*  request_id=[0-9a-f]{32}$',
            output,
            re.MULTILINE,
        ), output
        assert "/readyz HTTP" not in output
        # Plain text for the terminal, although the children write to pipes.
        assert not re.search(r"^(gateway |worker-0) \| \{", output, re.MULTILINE), output

        with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/v1/methods", timeout=5):
            pass
        run.read_until('"GET /v1/methods HTTP/1.1" 200', timeout_s=30)
        os.killpg(run.process.pid, signal.SIGINT)
        assert run.finish() == 0


def test_a_worker_that_fails_to_start_is_reported_with_its_last_lines() -> None:
    with glimpse_run(GLIMPSE_DEVICE="tpu") as run:
        status = run.finish(timeout_s=120)

        assert status == 1, run.output
        report = run.output.split("Glimpse did not start: ", 1)[-1]
        assert report.startswith("worker-0 exited with code 1. Its last lines:\n"), run.output
        assert "ValidationError" in report and "'tpu'" in report
        run.assert_nothing_left()


def test_a_worker_killed_while_serving_is_reported_and_the_run_exits_non_zero() -> None:
    with glimpse_run() as run:
        run.read_until("Press Ctrl-C")
        (worker,) = [pid for pid in processes_tagged(run.tag) if "workers.cli" in command_line(pid)]
        os.kill(worker, signal.SIGKILL)
        status = run.finish()

        assert status == 1, run.output
        report = run.output.split("Press Ctrl-C to stop.\n", 1)[1]
        assert re.search(
            r"^worker-0 killed by SIGKILL\. Its last lines:\n(  .+\n)+Stopping\.$", report, re.M
        )
        run.assert_nothing_left()


def test_wait_ready_names_the_dead_child_and_its_log_stays_on_disk(tmp_path: Path) -> None:
    stack = DevStack(
        port=free_port(),
        log_dir=tmp_path,
        env={"GLIMPSE_AUTH": "off", "GLIMPSE_DEVICE": "tpu"},
    )
    try:
        stack.start()
        with pytest.raises(RuntimeError) as raised:
            stack.wait_ready(timeout_s=120)
    finally:
        stack.stop()

    message = str(raised.value)
    assert message.startswith("worker-0 exited with code 1. Its last lines:\n")
    assert "'tpu'" in message
    assert "ValidationError" in (tmp_path / "worker-0.log").read_text()
    assert (tmp_path / "gateway.log").exists()
