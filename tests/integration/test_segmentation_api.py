"""Segmentation models through the real stack: every method on DeepLabV3 and a MONAI UNet, in
both formats, answers 200 with a map at the input's size or 422 with the reason; region targets
(predicted, box, mask) explain what they name, and bad ones are refused with a 422 that says why."""

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from private_stacks import private_stack  # type: ignore[import-not-found]
from segmentation_zoo import (  # type: ignore[import-not-found]
    NEVER_PREDICTED,
    SIZE,
    add_deeplab,
    add_unet,
)

from schemas.methods import PARAMS_BY_METHOD
from service.devstack import DevStack

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions"
CHEAP = {
    "smoothgrad": {"samples": 2},
    "integrated_gradients": {"steps": 4, "max_steps": 8},
    "rise": {"masks": 16},
    "scorecam": {"batch_size": 64},
    "occlusion": {"window": 16, "stride": 16},
}
METHODS = sorted(PARAMS_BY_METHOD)
MODELS = ["deeplab", "deeplab-onnx", "unet", "unet-onnx"]
# Not the model's size: maps come back at the input's.
HEIGHT, WIDTH = 48, 80


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("segmentation-models")
    (repository / "demo-lesions").symlink_to(DEMO)
    add_deeplab(repository)
    add_unet(repository)
    return repository


@pytest.fixture(scope="module")
def stack(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with private_stack(repository, tmp_path_factory.mktemp("segmentation-logs")) as running:
        yield running


@pytest.fixture()
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


def png(pixels: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def image_for(model: str) -> str:
    rng = np.random.default_rng(len(model))
    shape = (HEIGHT, WIDTH, 3) if model.startswith("deeplab") else (HEIGHT, WIDTH)
    return png(rng.integers(0, 255, shape, dtype=np.uint8))


def explain(
    client: httpx.Client, model: str, methods: list[str], target: object = "top1"
) -> httpx.Response:
    return client.post(
        "/v1/explanations?timeout=280",
        timeout=300,
        json={
            "model": model,
            "image": image_for(model),
            "methods": methods,
            "target": target,
            "params": {m: CHEAP[m] for m in methods if m in CHEAP},
            "output": {"overlay": False},
        },
    )


@pytest.mark.parametrize("model", MODELS)
def test_every_method_answers_a_map_at_the_input_size_or_a_422_with_the_reason(
    client: httpx.Client, model: str
) -> None:
    info = client.get(f"/v1/models/{model}").json()
    assert info["task"] == "segmentation"
    supported = [m for m in METHODS if m in info["methods"]]
    assert "cam" not in supported
    assert {"gradcam", "saliency", "integrated_gradients", "occlusion", "rise"} <= set(supported)
    answer = explain(client, model, supported)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    shares = [p["score"] for p in body["predictions"]]
    assert sum(shares) == pytest.approx(1.0) and shares == sorted(shares, reverse=True)
    top = body["predictions"][0]["class_index"]
    for explanation in body["explanations"]:
        values = np.array(explanation["scores"]["values"])
        assert values.shape == (HEIGHT, WIDTH), explanation["method"]
        assert np.isfinite(values).all()
        assert explanation["target"]["region"] == "predicted"
        assert explanation["target"]["class_index"] in {
            p["class_index"] for p in body["predictions"]
        }
        assert explanation["target"]["class_index"] != 0 or top == 0
    for method in sorted(set(METHODS) - set(supported)):
        refused = explain(client, model, [method])
        assert refused.status_code == 422, refused.text
        assert method in refused.json()["detail"]


def test_a_box_and_a_mask_target_explain_their_region(client: httpx.Client) -> None:
    box = explain(client, "unet", ["saliency"], {"class": 1, "box": [8, 4, 40, 30]})
    assert box.status_code == 200, box.text
    (explanation,) = box.json()["explanations"]
    assert explanation["target"] == {"class_index": 1, "label": "organ", "region": "box"}
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[10:20, 30:60] = 255
    masked = explain(
        client, "unet-onnx", ["occlusion"], {"class": NEVER_PREDICTED, "mask": png(mask)}
    )
    assert masked.status_code == 200, masked.text
    assert masked.json()["explanations"][0]["target"]["region"] == "mask"
    predicted = explain(client, "deeplab", ["gradcam"], {"class": 0, "region": "predicted"})
    assert predicted.status_code in (200, 422), predicted.text
    if predicted.status_code == 200:
        assert predicted.json()["explanations"][0]["target"]["region"] == "predicted"
    else:
        assert "predicted on no pixel" in predicted.json()["detail"]


@pytest.mark.parametrize(
    ("model", "target", "reason"),
    [
        ("unet", {"class": 1, "box": [0, 0, WIDTH + 1, 10]}, "reaches outside"),
        (
            "unet",
            {"class": 1, "mask": png(np.full((SIZE, SIZE), 255, np.uint8))},
            "input image's size",
        ),
        ("unet", {"class": 1, "mask": png(np.zeros((HEIGHT, WIDTH), np.uint8))}, "sets no pixel"),
        ("unet", {"class": 1, "mask": "bm90IGEgcG5n"}, "not a base64 PNG"),
        ("unet", NEVER_PREDICTED, "predicted on no pixel"),
        ("unet", {"class": NEVER_PREDICTED}, "predicted on no pixel"),
        ("unet", {"class": 3, "box": [0, 0, 2, 2]}, "out of range"),
        ("unet", {"class": 1, "box": [5, 5, 5, 9]}, "0 <= x0 < x1"),
        ("demo-lesions", {"class": 1, "box": [0, 0, 8, 8]}, "segmentation models"),
    ],
)
def test_a_bad_region_target_is_a_422_that_says_why(
    client: httpx.Client, model: str, target: object, reason: str
) -> None:
    answer = explain(client, model, ["saliency"], target)
    assert answer.status_code == 422, answer.text
    assert reason in answer.text


def test_activation_maximisation_of_a_class_is_refused_on_a_segmentation_model(
    client: httpx.Client,
) -> None:
    answer = client.post("/v1/models/unet/visualizations", json={"target": 1, "steps": 2})
    assert answer.status_code == 422, answer.text
    assert "segmentation model" in answer.json()["detail"]
