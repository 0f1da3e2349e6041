"""DICOM through the whole path on real parts: HTTP → gateway → Redis → worker → maps."""

import base64
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from dicom_files import (  # type: ignore[import-not-found]
    PLANTED_VALUES,
    ct_file,
    short_rle_file,
    unsupported_syntax_file,
)
from log_lines import logged_text  # type: ignore[import-not-found]

from service.devstack import DevStack
from workers.demo.data import make_sample, to_png_bytes

MODEL = "demo-lesions"
METHODS = ["gradcam", "saliency"]
SEED = 17
LUNG_WINDOW = {"center": -600, "width": 1500}
# The CT fixture's window: it maps the Hounsfield-like values back onto the demo's grey levels.
GREY_WINDOW = {"center": -513.5, "width": 1021, "function": "LINEAR"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def explain_json(
    client: httpx.Client, image: bytes, output: dict[str, object] | None = None, **fields: object
) -> httpx.Response:
    return client.post(
        "/v1/explanations",
        json={"model": MODEL, "image": b64(image), "methods": METHODS, "output": output or {}}
        | fields,
    )


def maps(answer: httpx.Response) -> dict[str, np.ndarray]:
    assert answer.status_code == 200, answer.text
    return {e["method"]: np.array(e["scores"]["values"]) for e in answer.json()["explanations"]}


@pytest.fixture(scope="module")
def png_maps(client: httpx.Client) -> dict[str, np.ndarray]:
    """The maps of the demo lesion sent as an 8-bit PNG, the reference for its DICOM twins."""
    return maps(explain_json(client, to_png_bytes(make_sample(SEED).image)))


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


def test_a_ct_file_is_explained_through_its_own_window_like_the_png(
    client: httpx.Client, png_maps: dict[str, np.ndarray]
) -> None:
    answer = explain_json(client, ct_file(make_sample(SEED).image))

    result = answer.json()
    for method, values in maps(answer).items():
        assert values.shape == (128, 128)
        # The window maps the file onto exactly the PNG's float32 pixels (tests/workers/
        # test_dicom.py), so the model sees the same input and computes the same map, bit for bit.
        np.testing.assert_array_equal(values, png_maps[method])
    assert all(e["overlay_png"] for e in result["explanations"])
    assert result["provenance"]["dicom"] == {"frame": 0, "window": GREY_WINDOW, "voi_lut": False}


def test_multipart_picks_a_frame_and_overrides_the_files_window(
    client: httpx.Client, png_maps: dict[str, np.ndarray]
) -> None:
    image = make_sample(SEED).image
    frames = np.stack([np.zeros_like(image), image])
    data = ct_file(frames, WindowCenter=LUNG_WINDOW["center"], WindowWidth=LUNG_WINDOW["width"])
    dicom = {"frame": 1, "window": GREY_WINDOW}

    answer = client.post(
        "/v1/explanations",
        files={"image": ("scan.dcm", data, "application/dicom")},
        data={
            "model": MODEL,
            "methods": ",".join(METHODS),
            "dicom": json.dumps(dicom),
        },
    )

    for method, values in maps(answer).items():
        # The same float32 pixels as the PNG's, as above: the same map, bit for bit.
        np.testing.assert_array_equal(values, png_maps[method])
    assert answer.json()["provenance"]["dicom"] == dicom | {"voi_lut": False}


def test_a_frame_the_file_lacks_is_422_naming_its_frame_count(client: httpx.Client) -> None:
    image = make_sample(SEED).image
    data = ct_file(np.stack([image, image]))

    answer = explain_json(client, data, dicom={"frame": 2})

    assert answer.status_code == 422, answer.text
    assert "2 frame(s)" in answer.json()["detail"]


def test_dicom_options_with_a_png_are_422(client: httpx.Client) -> None:
    answer = explain_json(client, to_png_bytes(make_sample(SEED).image), dicom={"frame": 0})

    assert answer.status_code == 422, answer.text


def test_a_transfer_syntax_it_does_not_read_is_415_naming_it(client: httpx.Client) -> None:
    levels = np.round(make_sample(SEED).image * 255).astype(np.uint8)

    answer = explain_json(client, unsupported_syntax_file(levels))

    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "High-Throughput JPEG 2000" in answer.json()["detail"]


def test_a_corrupt_rle_frame_fails_in_the_worker_as_400(client: httpx.Client) -> None:
    levels = np.round(make_sample(SEED).image * 255).astype(np.int16)

    answer = explain_json(client, short_rle_file(levels))

    assert answer.status_code == 400, answer.text
    assert answer.json()["job_id"]


def test_no_patient_value_reaches_a_response_or_a_log(
    client: httpx.Client, stack: DevStack
) -> None:
    image = make_sample(SEED).image
    levels = np.round(image * 255).astype(np.uint8)
    answers = [
        explain_json(client, ct_file(image), output={"heatmap": True, "scores": "base64"}),
        explain_json(client, ct_file(np.stack([image, image])), dicom={"frame": 5}),
        explain_json(client, unsupported_syntax_file(levels)),
        explain_json(client, short_rle_file(levels.astype(np.int16))),
        explain_json(client, ct_file(image)[:-300]),
    ]
    job = client.post(
        "/v1/jobs", json={"model": MODEL, "image": b64(ct_file(image)), "methods": ["saliency"]}
    )
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 60
    while (polled := client.get(job.json()["url"]).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert [a.status_code for a in answers] == [200, 422, 415, 400, 400]
    assert polled["status"] == "succeeded"
    bodies = "".join(answer.text for answer in answers) + json.dumps(polled)
    assert not any(value in bodies for value in PLANTED_VALUES)
    assert stack.log_dir is not None
    time.sleep(0.5)
    raw = "".join(path.read_text(errors="replace") for path in stack.log_dir.glob("*.log"))
    # Every line is JSON; what its values say, decoded from JSON's escapes, is searched too.
    decoded = logged_text(stack.log_dir)
    assert polled["job_id"] in decoded  # the logs were captured at all
    for logs in (raw, decoded):
        assert not any(value in logs for value in PLANTED_VALUES)
