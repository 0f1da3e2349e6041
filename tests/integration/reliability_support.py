"""Shared pieces of the fault-injection tests: a repository of faulty models and stacks on it."""

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import redis
import torch
from PIL import Image
from safetensors.torch import save_file

from schemas import keys
from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis

HERE = Path(__file__).resolve().parent

FAULTY_MODELS = {
    "slow": {"delay_s": 0.4},
    "fast": {"delay_s": 0.0},
    "oom": {"delay_s": 0.0, "oom_above": 1},
}


def build_repository(root: Path) -> Path:
    """A model repository with the FaultyNet variants of `slow_models`, weights in safetensors."""
    from slow_models import build_faulty_net  # type: ignore[import-not-found]

    for model_id, kwargs in FAULTY_MODELS.items():
        folder = root / model_id / "1"
        folder.mkdir(parents=True)
        torch.manual_seed(0)
        save_file(build_faulty_net(**kwargs).state_dict(), str(folder / "model.safetensors"))
        manifest = {
            "id": model_id,
            "version": "1",
            "format": "safetensors",
            "architecture": {"factory": "slow_models:build_faulty_net", "kwargs": kwargs},
            "labels": ["left", "right"],
            "input": {"channels": 1, "height": 32, "width": 32, "mean": [0.5], "std": [0.5]},
            "cam_layer": "features.1",
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return root


def image_b64(seed: int, white: bool = False, text: str | None = None) -> str:
    """A real 32×32 grayscale PNG, random or white, optionally carrying a tEXt chunk."""
    from PIL.PngImagePlugin import PngInfo

    pixels = (
        np.full((32, 32), 255, np.uint8)
        if white
        else (np.random.default_rng(seed).integers(0, 200, (32, 32), dtype=np.uint8))
    )
    info = PngInfo()
    if text is not None:
        info.add_text("Comment", text)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG", pnginfo=info)
    return base64.b64encode(out.getvalue()).decode()


@contextmanager
def faulty_stack(
    repository: Path,
    log_dir: Path,
    *,
    workers: int = 1,
    redis: PrivateRedis | None = None,
    redis_url: str | None = None,
    **env: str,
) -> Iterator[DevStack]:
    """Gateway + workers serving the faulty models, against `redis` (or the Redis `redis_url`
    names) or a fresh private one."""
    own_redis = redis is None and redis_url is None
    server = PrivateRedis().start() if own_redis else redis
    stack = DevStack(
        port=free_port(),
        workers=workers,
        redis_url=redis_url or (server.url if server is not None else None),
        log_dir=log_dir,
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MODEL_REPOSITORY": str(repository),
            "GLIMPSE_MAX_BATCH": "4",
            "GLIMPSE_HEARTBEAT_S": "0.5",
            "PYTHONPATH": str(HERE),
            **env,
        },
    )
    try:
        with stack.serving(timeout_s=120):
            yield stack
    finally:
        if own_redis and server is not None:
            server.stop()


def submit(client: httpx.Client, model: str, image: str, **fields: object) -> str:
    answer = client.post("/v1/jobs", json={"model": model, "image": image, **fields})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


def wait_for(
    client: httpx.Client, job_ids: list[str], timeout_s: float = 60
) -> dict[str, dict[str, object]]:
    """Each job's final status, polling until every one has finished."""
    finished: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + timeout_s
    while len(finished) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id in finished:
                continue
            status = client.get(f"/v1/jobs/{job_id}").json()
            if status["status"] in ("succeeded", "failed", "cancelled"):
                finished[job_id] = status
        time.sleep(0.1)
    return finished


def event_counts(store: redis.Redis) -> dict[str, int]:
    raw = cast(dict[bytes, bytes], store.hgetall(keys.STATS))
    return {name.decode(): int(value) for name, value in raw.items()}


def check_kill_9_mid_batch(stack: DevStack, client: httpx.Client, store: redis.Redis) -> None:
    """SIGKILL one of the stack's two workers while 24 jobs are queued or running: every job
    succeeds, each result is stored once, and the stream ends empty with nothing pending."""
    job_ids = [submit(client, "slow", image_b64(i)) for i in range(24)]
    victim = stack.processes[0]
    assert wait_until(
        lambda: any(client.get(f"/v1/jobs/{j}").json()["status"] == "running" for j in job_ids),
        timeout_s=20,
    )
    stack.kill(victim)  # SIGKILL: no chance to acknowledge anything

    finished = wait_for(client, job_ids, timeout_s=90)

    assert len(finished) == len(job_ids), "jobs were lost"
    assert {s["status"] for s in finished.values()} == {"succeeded"}
    assert all(s["result"]["job_id"] == j for j, s in finished.items())  # type: ignore[index]
    assert event_counts(store)["results_stored"] == len(job_ids)
    assert store.xlen(keys.job_stream("slow")) == 0
    assert store.xpending(keys.job_stream("slow"), keys.CONSUMER_GROUP)["pending"] == 0


def wait_until(condition: object, timeout_s: float = 30, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(interval_s)
    return False
