"""`glimpse run` (what `make run` starts): ready, announced, and gone without a trace on Ctrl-C."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from service.devstack import free_port

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


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_run_starts_everything_and_ctrl_c_stops_it_all() -> None:
    tag = f"GLIMPSE_RUN_TAG={uuid.uuid4().hex}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        GLIMPSE_PORT=str(port),
        GLIMPSE_DEVICE="cpu",
        GLIMPSE_MODEL_REPOSITORY=str(ROOT / "models"),
        GLIMPSE_RUN_TAG=tag.split("=", 1)[1],
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 180
        assert run.stdout is not None
        while time.monotonic() < deadline:
            line = run.stdout.readline()
            assert line, f"glimpse run ended early:\n{''.join(lines)}"
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "Authentication is OFF" in output
        assert f"http://127.0.0.1:{port}/" in output and "/docs" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            assert answer.status == 200
        # The run, the gateway and a worker; Redis rewrites its environment block as its title.
        assert len(processes_tagged(tag)) >= 3
        redis_port = int(output.split("Redis: redis://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert port_is_open(redis_port)

        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert run.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while processes_tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_tagged(tag) == []
        assert not port_is_open(redis_port)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
