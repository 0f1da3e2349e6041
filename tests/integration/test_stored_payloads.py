"""Nothing a client sent or got back reaches Redis's files in clear: not a DICOM header value,
not the pixels, not a score. Run against an append-only Redis that syncs every write, as
`docker-compose.yml` runs it, and a snapshot taken while the job waits and after it ended."""

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicom_files import PLANTED_VALUES, dicom_file  # type: ignore[import-not-found]
from redis import Redis

from schemas import keys
from schemas.jobs import JobRecord
from schemas.sealing import KEY_FILE_VARIABLE, PayloadSealer, result_field
from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
MODEL = "demo-lesions"
PIXEL_MARKER = b"PXL-pattern-Kj5m7"
SIDE = 128


def marked_pixels() -> np.ndarray:
    """A grey image whose bytes are `PIXEL_MARKER` over and over, to be recognised on disk."""
    repeats = SIDE * SIDE // len(PIXEL_MARKER) + 1
    return np.frombuffer(PIXEL_MARKER * repeats, np.uint8)[: SIDE * SIDE].reshape(SIDE, SIDE)


@pytest.fixture(scope="module")
def redis_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("redis-data")


@pytest.fixture(scope="module")
def server(redis_dir: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(appendonly=True, appendfsync="always", data_dir=redis_dir) as running:
        Redis.from_url(running.url).config_set("rdbcompression", "no")  # strings stay greppable
        yield running


@pytest.fixture(scope="module")
def stack(server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    running = DevStack(
        port=free_port(),
        redis_url=server.url,
        log_dir=tmp_path_factory.mktemp("logs"),
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_MODEL_REPOSITORY": str(ROOT / "models"),
            "GLIMPSE_DEVICE": "cpu",
        },
    )
    with running.serving():
        yield running


def snapshot(server: PrivateRedis, redis_dir: Path) -> bytes:
    """What `SAVE` writes to disk now."""
    Redis.from_url(server.url).save()
    return (redis_dir / "dump.rdb").read_bytes()


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def middle(text: str, length: int) -> str:
    """`length` characters from the middle of `text`."""
    start = (len(text) - length) // 2
    return text[start : start + length]


def test_no_header_value_pixel_or_score_is_on_disk_in_clear(
    stack: DevStack, server: PrivateRedis, redis_dir: Path, payload_key_file: Path
) -> None:
    image = base64.b64encode(dicom_file(marked_pixels())).decode()
    body = {"model": MODEL, "image": image, "methods": ["saliency"], "output": {"scores": "json"}}
    worker = stack.processes[0]
    with httpx.Client(base_url=stack.url, timeout=120) as client:
        worker.send_signal(signal.SIGSTOP)  # so that the snapshot catches the job still queued
        try:
            queued = client.post("/v1/jobs", json=body)
            assert queued.status_code == 202, queued.text
            while_queued = snapshot(server, redis_dir)
        finally:
            worker.send_signal(signal.SIGCONT)
        job_id = queued.json()["job_id"]
        deadline = time.monotonic() + 60
        while (polled := client.get(f"/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert polled["status"] in ("queued", "running"), polled
            assert time.monotonic() < deadline
            time.sleep(0.1)
        repeated = client.post("/v1/explanations", json=body)
        visualized = client.post(
            f"/v1/models/{MODEL}/visualizations", json={"target": 0, "steps": 8, "seed": 3}
        )
    assert repeated.status_code == 200 and repeated.json()["cached"] is True, repeated.text
    assert visualized.status_code == 200, visualized.text
    after = snapshot(server, redis_dir)

    on_disk = {**files_under(redis_dir), "queued.rdb": while_queued, "after.rdb": after}
    aof = b"".join(data for name, data in on_disk.items() if ".aof" in name)
    # The files did record the job: its image's key, its record and the cache are there.
    assert (
        keys.job_image(job_id).encode() in aof and keys.job_image(job_id).encode() in while_queued
    )
    assert keys.job_record(job_id).encode() in after
    assert b"glimpse:cache:explanation:" in after and b"glimpse:visualization:" in after
    # What would be on disk in clear, read back through the key: a stretch of the score array.
    sealer = PayloadSealer.from_key_file(payload_key_file)
    record_key = keys.job_record(job_id)
    sealed = Redis.from_url(server.url).hget(record_key, JobRecord.RESULT)
    assert isinstance(sealed, bytes)
    result = sealer.open(sealed, result_field(record_key, JobRecord.RESULT)).decode()
    scores = middle(result[result.index('"values":[') :], 48)
    visual = middle(visualized.json()["image_png"], 48)
    secrets = [*PLANTED_VALUES, PIXEL_MARKER.decode(), scores, visual]
    found = {
        (secret, name)
        for secret in secrets
        for name, data in on_disk.items()
        if secret.encode() in data
    }
    assert found == set()


@pytest.mark.parametrize(
    "command",
    [["workers.cli"], ["service.cli", "serve", "--port", "0"]],
    ids=["worker", "gateway"],
)
def test_without_a_payload_key_neither_side_starts(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != KEY_FILE_VARIABLE}
    env.update(GLIMPSE_MODEL_REPOSITORY=str(ROOT / "models"), GLIMPSE_DEVICE="cpu")

    ended = subprocess.run(
        [sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=60
    )

    assert ended.returncode != 0
    assert f"{KEY_FILE_VARIABLE} is not set" in ended.stdout + ended.stderr
