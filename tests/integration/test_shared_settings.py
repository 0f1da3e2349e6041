"""Settings that the gateway and the worker share: both processes read them from one place."""

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from dicom_files import dicom_file  # type: ignore[import-not-found]
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless

from schemas import keys
from schemas.settings import DEFAULT_MAX_IMAGE_PIXELS
from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
# Above the default, so that an image between the two limits proves both processes read it.
RAISED_PIXELS = DEFAULT_MAX_IMAGE_PIXELS + 6_000_000
RESULT_TTL_S = 3
SIDE = 256


@pytest.fixture(scope="module")
def raised_redis() -> Iterator[str]:
    """A Redis of this module's own: a worker with other settings on a shared Redis would take
    jobs of the same model from the same stream."""
    with PrivateRedis() as server:
        yield server.url


@pytest.fixture(scope="module")
def raised(raised_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    repository = tmp_path_factory.mktemp("shared-models")
    (repository / "demo-lesions").symlink_to(ROOT / "models" / "demo-lesions")
    stack = DevStack(
        port=free_port(),
        redis_url=raised_redis,
        log_dir=tmp_path_factory.mktemp("shared-logs"),
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_MODEL_REPOSITORY": str(repository),
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MAX_IMAGE_PIXELS": str(RAISED_PIXELS),
            "GLIMPSE_RESULT_TTL_S": str(RESULT_TTL_S),
        },
    )
    with stack.serving():
        yield stack


def many_frames(frames: int) -> bytes:
    """An RLE multi-frame file of `frames` identical SIDE × SIDE frames: Rows × Columns × frames
    counts against the pixel limit, yet the file is small and one frame decodes quickly."""
    # Constant rows compress to a few bytes each, with a bright disc so that the map has a peak.
    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = np.where((yy - 90) ** 2 + (xx - 160) ** 2 < 400, 220, 30).astype(np.uint8)
    single = dcmread(io.BytesIO(dicom_file(disc, transfer_syntax=RLELossless)))
    frame = next(generate_frames(single.PixelData, number_of_frames=1))
    single.NumberOfFrames = frames
    single.PixelData = encapsulate([frame] * frames)
    out = io.BytesIO()
    single.save_as(out, enforce_file_format=True)
    return out.getvalue()


def explain(stack: DevStack, image: bytes) -> httpx.Response:
    body = {
        "model": "demo-lesions",
        "image": base64.b64encode(image).decode(),
        "methods": ["gradcam"],
        "output": {"overlay": False, "scores": "none"},
    }
    return httpx.post(f"{stack.url}/v1/explanations", json=body, timeout=120)


def test_a_raised_pixel_limit_lets_a_bigger_image_through_both_processes(
    raised: DevStack,
) -> None:
    frames = DEFAULT_MAX_IMAGE_PIXELS // (SIDE * SIDE) + 1
    assert DEFAULT_MAX_IMAGE_PIXELS < frames * SIDE * SIDE <= RAISED_PIXELS
    answer = explain(raised, many_frames(frames))
    assert answer.status_code == 200, answer.text
    assert answer.json()["explanations"][0]["method"] == "gradcam"

    beyond = RAISED_PIXELS // (SIDE * SIDE) + 1
    refused = explain(raised, many_frames(beyond))
    assert refused.status_code == 413
    assert str(RAISED_PIXELS) in refused.json()["detail"]


def test_a_cached_result_expires_with_the_result_ttl(raised: DevStack, raised_redis: str) -> None:
    store = redis.Redis.from_url(raised_redis)
    pattern = keys.explanation_cache("*", "*")
    before = set(store.scan_iter(match=pattern))
    image = dicom_file(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    first = explain(raised, image)
    assert first.status_code == 200 and first.json()["cached"] is False
    added = set(store.scan_iter(match=pattern)) - before
    assert len(added) == 1
    (cache_key,) = added
    assert 0 < store.ttl(cache_key) <= RESULT_TTL_S
    assert explain(raised, image).json()["cached"] is True

    deadline = time.monotonic() + RESULT_TTL_S + 5
    while store.exists(cache_key) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not store.exists(cache_key)
    assert explain(raised, image).json()["cached"] is False
