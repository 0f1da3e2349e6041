"""Derived DICOM objects through the whole path (gateway → Redis → worker), and where the source's
patient, study and equipment identity goes: into the objects, and nowhere else — no Redis key
name, no value stored in clear, no log line — and nothing of it after the job's TTL."""

import base64
import io
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pytest
from dicom_files import ct_file  # type: ignore[import-not-found]
from log_lines import logged_text  # type: ignore[import-not-found]
from pydicom import dcmread
from redis import Redis

from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis
from workers.demo.data import make_sample, to_png_bytes

ROOT = Path(__file__).resolve().parents[2]
MODEL = "demo-lesions"
KINDS = ["secondary_capture", "parametric_map", "segmentation"]
RESULT_TTL_S = 3


def planted() -> dict[str, str]:
    """Identity values no other file, key or log line can hold by chance."""
    token = secrets.token_hex(6).upper()
    return {
        "PatientName": f"ZQ{token}^PATIENT",
        "PatientID": f"PID{token}",
        "PatientBirthDate": f"19{10 + secrets.randbelow(90)}0{1 + secrets.randbelow(9)}1"
        f"{1 + secrets.randbelow(9)}",
        "InstitutionName": f"INST{secrets.token_hex(6).upper()}",
    }


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateRedis]:
    with PrivateRedis() as running:
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
            "GLIMPSE_RESULT_TTL_S": str(RESULT_TTL_S),
        },
    )
    with running.serving():
        yield running


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        yield http


def explain(client: httpx.Client, image: bytes, output: dict[str, object]) -> httpx.Response:
    return client.post(
        "/v1/explanations",
        json={
            "model": MODEL,
            "image": base64.b64encode(image).decode(),
            "methods": ["saliency"],
            "output": output,
        },
    )


def test_all_three_objects_come_back_for_a_dicom_input(client: httpx.Client) -> None:
    image = make_sample(7).image
    data = ct_file(image)
    source = dcmread(io.BytesIO(data))

    answer = explain(client, data, {"dicom": KINDS, "threshold": 0.2, "scores": "base64"})

    assert answer.status_code == 200, answer.text
    (explanation,) = answer.json()["explanations"]
    assert sorted(explanation["dicom"]) == sorted(KINDS)
    objects = {k: dcmread(io.BytesIO(base64.b64decode(v))) for k, v in explanation["dicom"].items()}
    scores = np.frombuffer(base64.b64decode(explanation["scores"]["base64"]), "<f4")
    scores = scores.reshape(explanation["scores"]["shape"])
    for derived in objects.values():
        assert derived.StudyInstanceUID == source.StudyInstanceUID
        assert derived.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert "saliency" in derived.SeriesDescription
    assert objects["secondary_capture"].pixel_array.shape == (*image.shape, 3)
    parametric = hd.pm.ParametricMap.from_dataset(objects["parametric_map"])
    # The map the response carries, as float32, is the one the Parametric Map stores.
    np.testing.assert_array_equal(parametric.pixel_array.reshape(scores.shape), scores)
    segmentation = hd.seg.Segmentation.from_dataset(objects["segmentation"])
    mask = segmentation.pixel_array.reshape(scores.shape).astype(bool)
    count = int(np.ceil(0.2 * scores.size))
    cutoff = np.sort(scores, axis=None)[-count]
    np.testing.assert_array_equal(mask, scores >= cutoff)


def test_derived_objects_of_a_png_are_422(client: httpx.Client) -> None:
    answer = explain(client, to_png_bytes(make_sample(7).image), {"dicom": ["segmentation"]})

    assert answer.status_code == 422, answer.text
    assert "output.dicom" in answer.json()["detail"]


@pytest.mark.parametrize("output", [{"dicom": ["segmentation"] * 2}, {"threshold": 1.0}])
def test_a_repeated_kind_or_a_threshold_out_of_range_is_422(
    client: httpx.Client, output: dict[str, object]
) -> None:
    answer = explain(client, ct_file(make_sample(7).image), output)

    assert answer.status_code == 422, answer.text


def stored_in_clear(redis: Redis) -> bytes:
    """Every key name and every stored value (sealed payloads as they are stored), as bytes."""
    dumped: list[bytes] = []
    for key in redis.scan_iter(count=1000):
        dumped.append(key)
        kind = redis.type(key)
        if kind == b"string":
            dumped.append(redis.get(key) or b"")
        elif kind == b"hash":
            dumped.extend(part for item in redis.hgetall(key).items() for part in item)
        elif kind == b"stream":
            for _, fields in redis.xrange(key):
                dumped.extend(part for item in fields.items() for part in item)
        elif kind == b"list":
            dumped.extend(redis.lrange(key, 0, -1))
        elif kind in (b"set", b"zset"):
            dumped.extend(redis.zrange(key, 0, -1) if kind == b"zset" else redis.smembers(key))
    return b"\n".join(dumped)


def test_identity_reaches_the_objects_and_no_key_value_or_log(
    client: httpx.Client, stack: DevStack, server: PrivateRedis
) -> None:
    identity = planted()
    data = ct_file(make_sample(11).image, **identity)
    body = {
        "model": MODEL,
        "image": base64.b64encode(data).decode(),
        "methods": ["saliency"],
        "output": {"dicom": KINDS},
    }

    queued = client.post("/v1/jobs", json=body)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    deadline = time.monotonic() + 60
    while (polled := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert polled["status"] == "succeeded", polled
    redis = Redis.from_url(server.url)
    during = stored_in_clear(redis)

    (explanation,) = polled["result"]["explanations"]
    for encoded in explanation["dicom"].values():
        derived = dcmread(io.BytesIO(base64.b64decode(encoded)))
        assert str(derived.PatientName) == identity["PatientName"]
        assert derived.PatientID == identity["PatientID"]
        assert derived.PatientBirthDate == identity["PatientBirthDate"]
        assert derived.InstitutionName == identity["InstitutionName"]
    assert job_id.encode() in during  # the job's keys were there to be scanned
    assert stack.log_dir is not None
    time.sleep(0.5)
    raw = "".join(path.read_text(errors="replace") for path in stack.log_dir.glob("*.log"))
    decoded = logged_text(stack.log_dir)
    assert job_id in decoded  # the logs were captured at all
    values = list(identity.values())
    assert [v for v in values if v.encode() in during] == []
    assert [v for v in values if v in raw or v in decoded] == []

    # The job's record lives twice the result TTL; past it, none of its keys is left.
    time.sleep(2 * RESULT_TTL_S + 1.5)
    after = stored_in_clear(redis)
    assert job_id.encode() not in after
    assert [v for v in values if v.encode() in after] == []
