"""Every attribution method answers through the API, on the demo model and on ResNet-50, from
both the safetensors and the ONNX format, and the ONNX twin gives the same maps."""

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from schemas.methods import PARAMS_BY_METHOD
from workers.demo.data import make_sample, to_png_bytes

# Small settings: this proves the plumbing; the methods' accuracy is tested in tests/workers.
CHEAP = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 8, "max_steps": 32},
    "rise": {"masks": 64},
    "scorecam": {"batch_size": 64},
    "occlusion": {"window": 16, "stride": 16},
}
METHODS = sorted(PARAMS_BY_METHOD)


def rgb_png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, format="PNG")
    return out.getvalue()


def explain(client: httpx.Client, model: str, image: bytes, methods: list[str]) -> httpx.Response:
    return client.post(
        "/v1/explanations?timeout=280",
        timeout=300,
        json={
            "model": model,
            "image": base64.b64encode(image).decode(),
            "methods": methods,
            "params": {m: CHEAP[m] for m in methods if m in CHEAP},
            "output": {"size": "model", "overlay": False},
        },
    )


@pytest.mark.parametrize(
    ("pytorch_model", "onnx_model", "image"),
    [
        ("demo-lesions", "demo-lesions-onnx", to_png_bytes(make_sample(21).image)),
        ("resnet50", "resnet50-onnx", rgb_png(4)),
    ],
)
def test_every_method_in_both_formats(
    client: httpx.Client, pytorch_model: str, onnx_model: str, image: bytes
) -> None:
    info = client.get(f"/v1/models/{pytorch_model}").json()
    assert set(METHODS) <= set(info["methods"]), "a method is not offered for this model"
    maps = {}
    for model in (pytorch_model, onnx_model):
        answer = explain(client, model, image, METHODS)
        assert answer.status_code == 200, answer.text
        explanations = answer.json()["explanations"]
        assert [e["method"] for e in explanations] == METHODS
        for explanation in explanations:
            values = np.array(explanation["scores"]["values"])
            assert values.shape == (info["input"]["height"], info["input"]["width"])
            assert np.isfinite(values).all()
            # Normalised to its extreme, or all zero (a CAM can vanish on random weights).
            assert np.abs(values).max() in (pytest.approx(1.0), 0.0), explanation["method"]
            if explanation["method"] == "integrated_gradients":
                assert explanation["checks"]["steps"] in (8, 16, 32)
                assert explanation["checks"]["completeness_gap"] >= 0
            else:
                assert explanation["checks"] is None
        maps[model] = {e["method"]: np.array(e["scores"]["values"]) for e in explanations}
    differences = {
        method: float(np.abs(maps[pytorch_model][method] - maps[onnx_model][method]).max())
        for method in METHODS
    }
    failing = {m: d for m, d in differences.items() if d >= 1e-4}
    assert not failing, failing
