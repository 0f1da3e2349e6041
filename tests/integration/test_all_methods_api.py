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
# The methods that read the twin's logits from ONNX Runtime; all others run its onnx2torch module.
RUNTIME_METHODS = {"occlusion", "rise"}
EPS32 = float(np.finfo(np.float32).eps)  # method_checks.EPS32, not importable from here
# Per model: its layers with weights (convolutions and the linear head), their largest fan-in.
ARITHMETIC = {"demo-lesions": (5, 64 * 3 * 3), "resnet50": (54, 512 * 3 * 3)}


def rgb_png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, format="PNG")
    return out.getvalue()


# Score-CAM runs a forward pass per channel of its layer, so it runs on a narrower one where a
# model has it: 2,048 channels at ResNet-50's default `layer4`, 512 at the last block's second
# BatchNorm (the same module in both formats); 768 at Swin-T's default, 96 in its first stage
# (`features.1`, channels-last like the default). ViT-B/16 has 768 in every block.
SCORECAM_LAYER = {
    "resnet50": "layer4.2.bn2",
    "resnet50-onnx": "layer4/layer4/2/bn2/BatchNormalization",
    "swin-t": "features.1",
}


def cheap_params(model: str, methods: list[str]) -> dict[str, dict[str, object]]:
    """The `CHEAP` settings of those of `methods` that have them, for `model`."""
    params: dict[str, dict[str, object]] = {m: dict(CHEAP[m]) for m in methods if m in CHEAP}
    if model in SCORECAM_LAYER and "scorecam" in params:
        params["scorecam"]["layer"] = SCORECAM_LAYER[model]
    return params


def explain(client: httpx.Client, model: str, image: bytes, methods: list[str]) -> httpx.Response:
    return client.post(
        "/v1/explanations?timeout=280",
        timeout=300,
        json={
            "model": model,
            "image": base64.b64encode(image).decode(),
            "methods": methods,
            "params": cheap_params(model, methods),
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
    maps, targets, steps = {}, {}, {}
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
            elif not values.any():
                # A map that vanished says so.
                assert explanation["checks"]["degenerate"] == "all_zero", explanation["method"]
            else:
                assert explanation["checks"] is None
        maps[model] = {e["method"]: np.array(e["scores"]["values"]) for e in explanations}
        targets[model] = {e["target"]["class_index"] for e in explanations}
        steps[model] = [
            e["checks"]["steps"] for e in explanations if e["method"] == "integrated_gradients"
        ]
        top, second = (p["score"] for p in answer.json()["predictions"][:2])
        # top1 is an argmax: its logit lead, log(p1 / p2), must dwarf twice the formats' float32
        # logit gap (below 1e-4 of logits in the tens, below), or rounding could pick another.
        assert top > second * np.exp(1e-2), (model, top, second)
    assert targets[pytorch_model] == targets[onnx_model], targets
    # Refinement doubles IG's steps on a float comparison; both formats must have chosen alike.
    assert steps[pytorch_model] == steps[onnx_model], steps
    layers, fan_in = ARITHMETIC[pytorch_model]
    failing = {}
    for method in METHODS:
        ours, twins = maps[pytorch_model][method], maps[onnx_model][method]
        span = float(ours.max() - ours.min())
        if span == 0:  # an all-zero CAM (random weights) must be all zero in both formats
            assert not np.abs(twins).any(), method
            continue
        if method in RUNTIME_METHODS:
            # ONNX Runtime sums each dot product in another order than torch; the float32 error
            # of either order grows like eps32 · √n over the n products it sums, so two logits
            # differ by about eps32 · √(layers · fan-in) of their magnitude (6e-5 on ResNet-50),
            # and occlusion's logit drops and RISE's probabilities inherit that relative gap.
            bound = 2 * EPS32 * np.sqrt(layers * fan_in)
        else:
            # onnx2torch's module runs torch's own Conv2d, BatchNorm2d, ReLU, MaxPool2d and
            # Linear on the same float32 weights: its forward matches to the bit, so every ReLU
            # and max-pool decides alike, and only the order autograd sums gradients where
            # branches meet (a residual Add) or through pooling can differ, a rounding or two
            # per layer of values no larger than the map's: 4 roundings per layer cover them.
            bound = 4 * layers * EPS32 * float(np.abs(ours).max()) / span
        deviation = float(np.abs(ours - twins).max()) / span
        if not deviation <= bound:
            failing[method] = (deviation, bound)
    assert not failing, failing
