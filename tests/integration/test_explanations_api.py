"""The whole path on real parts: HTTP → gateway → Redis → worker process → PNG overlay."""

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from workers.demo.data import make_sample, to_png_bytes

MODEL = "demo-lesions"
EPS32 = float(np.finfo(np.float32).eps)  # method_checks.EPS32, not importable from here


def lesion_png(seed: int = 7) -> bytes:
    return to_png_bytes(make_sample(seed).image)


def reencode(png: bytes, mode: str, fmt: str, size: tuple[int, int] | None = None) -> bytes:
    image = Image.open(io.BytesIO(png)).convert(mode)
    if size is not None:
        image = image.resize(size)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def body(image: bytes, **fields: object) -> dict[str, object]:
    return {"model": MODEL, "image": base64.b64encode(image).decode(), **fields}


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@pytest.mark.parametrize(
    ("mode", "fmt", "size"),
    [
        ("L", "PNG", None),
        ("RGB", "PNG", (200, 150)),
        ("RGB", "JPEG", (96, 160)),
        ("L", "JPEG", None),
    ],
)
def test_explains_png_and_jpeg_at_the_input_size(
    client: httpx.Client, mode: str, fmt: str, size: tuple[int, int] | None
) -> None:
    image = reencode(lesion_png(), mode, fmt, size)
    width, height = Image.open(io.BytesIO(image)).size
    answer = client.post("/v1/explanations", json=body(image, methods=["gradcam", "saliency"]))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model"]["id"] == MODEL
    assert [e["method"] for e in result["explanations"]] == ["gradcam", "saliency"]
    labels = {"normal", "nodule", "mass"}
    assert result["predictions"][0]["label"] in labels
    # All 3 classes' float32 softmax: exp within eps32, a sum of n terms and a division, so
    # each probability is within (n + 2) · eps32 of its share and their sum within that of 1.
    scores = [p["score"] for p in result["predictions"]]
    assert len(scores) == len(labels)
    assert abs(sum(scores) - 1) <= (len(scores) + 2) * EPS32
    for explanation in result["explanations"]:
        overlay = decode_png(explanation["overlay_png"])
        assert overlay.size == (width, height)
        assert overlay.mode == "RGB"
        scores = explanation["scores"]
        assert scores["shape"] == [height, width]
        values = np.array(scores["values"])
        assert values.shape == (height, width)
        assert values.min() >= 0 and values.max() == pytest.approx(1.0)
        assert explanation["target"]["class_index"] == result["predictions"][0]["class_index"]
    assert result["provenance"]["params"]["gradcam"]["layer"]
    assert len(result["provenance"]["model_sha256"]) == 64
    assert result["timings"]["total_ms"] >= result["timings"]["compute_ms"] > 0


def test_gradcam_points_at_the_lesion(client: httpx.Client) -> None:
    sample = next(s for s in map(make_sample, range(11, 60)) if s.label != 0)
    answer = client.post("/v1/explanations", json=body(to_png_bytes(sample.image)))
    assert answer.status_code == 200, answer.text
    values = np.array(answer.json()["explanations"][0]["scores"]["values"])
    assert values[sample.mask].mean() > 2 * values[~sample.mask].mean()


def test_explicit_targets_model_size_grid_and_base64(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/explanations",
        json=body(
            lesion_png(),
            methods=["saliency"],
            target=[0, 2],
            output={"scores": "base64", "size": "model", "overlay": False, "heatmap": True},
        ),
    )
    assert answer.status_code == 200, answer.text
    explanations = answer.json()["explanations"]
    assert [e["target"]["class_index"] for e in explanations] == [0, 2]
    assert [e["target"]["label"] for e in explanations] == ["normal", "mass"]
    for explanation in explanations:
        assert explanation["overlay_png"] is None
        assert decode_png(explanation["heatmap_png"]).size == (128, 128)
        scores = explanation["scores"]
        values = np.frombuffer(base64.b64decode(scores["base64"]), dtype="<f4")
        assert values.reshape(scores["shape"]).shape == (128, 128)
        assert values.max() == pytest.approx(scores["max"])

    pooled = client.post(
        "/v1/explanations", json=body(lesion_png(), target="top2", output={"grid": 8})
    )
    assert pooled.status_code == 200, pooled.text
    explanations = pooled.json()["explanations"]
    assert len(explanations) == 2
    assert explanations[0]["scores"]["shape"] == [8, 8]


def test_multipart_upload(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/explanations",
        files={"image": ("scan.png", lesion_png(), "image/png")},
        data={"model": MODEL, "methods": "gradcam,saliency", "target": "top1"},
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["explanations"]) == 2


def poll(client: httpx.Client, url: str, timeout_s: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(url).json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"{url} did not finish")


def test_async_jobs_are_polled_to_success(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/explanations", json=body(lesion_png()), headers={"Prefer": "respond-async"}
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] == "queued"
    assert answer.headers["location"] == job["url"] == f"/v1/jobs/{job['job_id']}"
    status = poll(client, job["url"])
    assert status["status"] == "succeeded"
    assert status["result"]["job_id"] == job["job_id"]

    queued = client.post("/v1/jobs", json=body(lesion_png(), methods=["saliency"]))
    assert queued.status_code == 202
    assert poll(client, queued.json()["url"])["status"] == "succeeded"


def test_unknown_job_is_404(client: httpx.Client) -> None:
    answer = client.get("/v1/jobs/0123456789abcdef")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"model": MODEL, "image": "not base64 at all!"}, 400),
        ({"model": MODEL, "image": base64.b64encode(b"just some text").decode()}, 415),
        ({"model": MODEL, "image": base64.b64encode(lesion_png()[:60]).decode()}, 400),
        ({"model": "no-such-model", "image": base64.b64encode(lesion_png()).decode()}, 404),
        (body(lesion_png(), methods=["astrology"]), 422),
        (body(lesion_png(), target=7), 422),
        (body(lesion_png(), target="top9"), 422),
        (body(lesion_png(), params={"gradcam": {"layer": "no.such.layer"}}), 422),
        (body(lesion_png(), params={"gradcam": {"colour": "red"}}), 422),
        (body(lesion_png(), output={"alpha": 3}), 422),
        ({"image": base64.b64encode(lesion_png()).decode()}, 422),
    ],
)
def test_bad_input_gets_its_status(
    client: httpx.Client, payload: dict[str, object], status: int
) -> None:
    answer = client.post("/v1/explanations", json=payload)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status
    assert problem["title"] and problem["type"]


def test_wrong_media_type_and_oversized_body(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/explanations", content=b"model=x", headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 415
    huge = {"model": MODEL, "image": "A" * (5 * 1024 * 1024)}
    answer = client.post("/v1/explanations", json=huge)
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"


def test_models_and_methods(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    assert MODEL in [m["id"] for m in models]
    info = client.get(f"/v1/models/{MODEL}").json()
    assert info["labels"] == ["normal", "nodule", "mass"]
    assert info["input"]["channels"] == 1
    assert info["live_workers"] >= 1
    assert info["default_cam_layer"] in info["cam_layers"]
    assert {"gradcam", "saliency"} <= set(info["methods"])
    assert client.get("/v1/models/nothing").status_code == 404
    methods = {m["id"]: m for m in client.get("/v1/methods").json()}
    assert methods["saliency"]["parameters"]["properties"]["abs"]["default"] is True


def test_health_readiness_docs_and_demo_page(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["live_workers"] >= 1
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "ExplainRequest" in spec["components"]["schemas"]
    assert "/v1/explanations" in spec["paths"]
    assert "<form" in client.get("/").text


def test_onnx_model_gives_the_same_maps_as_its_pytorch_twin(client: httpx.Client) -> None:
    image = lesion_png(5)
    request = {"methods": ["gradcam", "saliency"], "output": {"size": "model", "overlay": False}}
    twin = client.post("/v1/explanations", json={**body(image, **request)})
    served = client.post(
        "/v1/explanations", json={**body(image, **request), "model": "demo-lesions-onnx"}
    )
    assert twin.status_code == served.status_code == 200, served.text
    assert served.json()["model"]["id"] == "demo-lesions-onnx"
    twin_predictions = twin.json()["predictions"]
    served_predictions = served.json()["predictions"]
    for ours, theirs in zip(served_predictions, twin_predictions, strict=True):
        assert ours["class_index"] == theirs["class_index"]
        # |Δp| ≤ p (1 − p) · 2 max|Δz| ≤ max|Δz| / 2, and ONNX Runtime's logits differ from
        # torch's by about eps32 · √(layers · fan-in) = 6.4e-6 of logits of a few units here.
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
    for ours, theirs in zip(
        served.json()["explanations"], twin.json()["explanations"], strict=True
    ):
        reference = np.array(theirs["scores"]["values"])
        # The twin's maps run its onnx2torch module, torch's own kernels on the same float32
        # weights: the forward matches to the bit (every ReLU and max-pool decides alike) and
        # the backward differs by at most a few roundings per layer of values no larger than
        # the map's; 4 per layer over the 5 layers with weights.
        bound = 4 * 5 * EPS32 * np.abs(reference).max()
        assert np.abs(np.array(ours["scores"]["values"]) - reference).max() <= bound
