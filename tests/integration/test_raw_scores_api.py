"""Raw attributions through the API (`output.normalize: false`) keep the axioms their methods
promise: DeepLIFT and Integrated Gradients sum to the change of the target logit from the black
baseline, LRP on a network without biases to the target logit itself. Logits come from the
service's own predictions (`logit`), the black image's from a second request.

Bounds are float32 round-off, to first order: every value the network computes is a sum of K
float32 products, off by at most K·u of the sum of its terms' magnitudes (u = 2⁻²⁴; Higham,
"Accuracy and Stability of Numerical Algorithms", §3.1), and the layers' errors add up. So a
logit is within Σ_l K_l · u · (its terms' magnitudes), and a map's sum within that of Σ|map|
(each value rounded on the way). The bound takes Σ_l K_l from the served network's own layers.
"""

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from model_zoo import UNBIASED_DEMO  # type: ignore[import-not-found]
from PIL import Image
from torch import nn

from workers.demo.data import make_sample, to_png_bytes
from workers.repository import load_model

MODEL = "demo-lesions"
SHIPPED = Path(__file__).resolve().parents[2] / "models" / MODEL / "1"
UNIT_ROUNDOFF = 2.0**-24
RAW = {"normalize": False, "size": "model", "scores": "base64", "overlay": False}


def accumulation_length(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Σ_l K_l: the terms each layer sums per output value (convolution and linear inputs,
    average-pool windows), added over the layers a value passes on its way to the logits."""
    lengths: list[int] = []

    def count(module: nn.Module, args: tuple[torch.Tensor, ...], _: object) -> None:
        if isinstance(module, nn.Conv2d):
            kernel = int(np.prod(module.kernel_size))
            lengths.append(module.in_channels // module.groups * kernel)
        elif isinstance(module, nn.Linear):
            lengths.append(module.in_features)
        elif isinstance(module, nn.AdaptiveAvgPool2d | nn.AvgPool2d):
            lengths.append(int(np.prod(args[0].shape[2:])))

    handles = [module.register_forward_hook(count) for module in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return sum(lengths)


@pytest.fixture(scope="module")
def roundoff() -> float:
    """Σ_l K_l · u of the demo network (the unbiased copy has the same layers)."""
    loaded = load_model(SHIPPED, torch.device("cpu"))
    spec = loaded.manifest.input
    return accumulation_length(loaded.module, (spec.channels, spec.height, spec.width)) * (
        UNIT_ROUNDOFF
    )


def lesion_images() -> list[bytes]:
    """Two lesion images of the generator's, one of each lesion class."""
    samples = [s for s in map(make_sample, range(7, 60)) if s.label != 0]
    first = samples[0]
    other = next(s for s in samples if s.label != first.label)
    return [to_png_bytes(first.image), to_png_bytes(other.image)]


def black_png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((128, 128), dtype=np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def post(client: httpx.Client, model: str, image: bytes, **fields: object) -> dict[str, object]:
    answer = client.post(
        "/v1/explanations?timeout=120",
        timeout=150,
        json={"model": model, "image": base64.b64encode(image).decode(), **fields},
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def logits_of(result: dict[str, object]) -> dict[int, float]:
    predictions = result["predictions"]
    assert isinstance(predictions, list)
    return {p["class_index"]: p["logit"] for p in predictions}


def raw_map(explanation: dict[str, object]) -> np.ndarray:
    scores = explanation["scores"]
    assert isinstance(scores, dict)
    assert scores["normalized"] is False and scores["signed"] is True
    values = np.frombuffer(base64.b64decode(scores["base64"]), dtype="<f4").reshape(scores["shape"])
    assert values.shape == (128, 128)
    assert float(values.min()) == scores["min"] and float(values.max()) == scores["max"]
    return values.astype(np.float64)


@pytest.mark.parametrize("image", lesion_images())
def test_deeplift_and_integrated_gradients_sum_to_the_logit_change(
    client: httpx.Client, roundoff: float, image: bytes
) -> None:
    result = post(client, MODEL, image, methods=["deeplift", "integrated_gradients"], output=RAW)
    explanations = result["explanations"]
    assert isinstance(explanations, list)
    target = explanations[0]["target"]["class_index"]
    logit = logits_of(result)[target]
    black = post(
        client, MODEL, black_png(), target=target, output={"scores": "none", "overlay": False}
    )
    black_logit = logits_of(black)[target]
    change = logit - black_logit
    assert abs(change) > 0.1, "the image must move the logit for the check to mean anything"
    magnitudes = abs(logit) + abs(black_logit)

    deeplift, integrated = (raw_map(e) for e in explanations)
    # DeepLIFT's Rescale rule makes completeness exact: only round-off remains.
    bound = roundoff * (np.abs(deeplift).sum() + magnitudes)
    assert abs(deeplift.sum() - change) <= bound, (deeplift.sum(), change, bound)
    # Integrated Gradients is as complete as its quadrature, which it reports.
    gap = explanations[1]["checks"]["completeness_gap"]
    bound = gap * abs(change) + roundoff * (np.abs(integrated).sum() + magnitudes)
    assert abs(integrated.sum() - change) <= bound, (integrated.sum(), change, bound)


@pytest.mark.parametrize(
    "params",
    [
        {"epsilon": 1e-9},
        {"composite": "epsilon", "first_layer": "same", "epsilon": 1e-9},
    ],
    ids=["epsilon_plus-zbox", "epsilon-same"],
)
def test_lrp_without_biases_sums_to_the_target_logit(
    client: httpx.Client, roundoff: float, params: dict[str, object]
) -> None:
    # The ε stabiliser absorbs a share ε / (|z| + ε) of a unit's relevance: with ε = 1e-9 that
    # is below the round-off u wherever |z| > 0.02, and units with smaller |z| carry little.
    for image in lesion_images():
        result = post(
            client, UNBIASED_DEMO, image, methods=["lrp"], params={"lrp": params}, output=RAW
        )
        explanations = result["explanations"]
        assert isinstance(explanations, list)
        logit = logits_of(result)[explanations[0]["target"]["class_index"]]
        relevance = raw_map(explanations[0])
        bound = roundoff * (np.abs(relevance).sum() + abs(logit))
        assert abs(relevance.sum() - logit) <= bound, (relevance.sum(), logit, bound)


def test_raw_map_is_the_normalised_map_unscaled_and_keeps_its_sum_on_a_grid(
    client: httpx.Client, roundoff: float
) -> None:
    image = lesion_images()[0]
    raw = raw_map(post(client, MODEL, image, methods=["deeplift"], output=RAW)["explanations"][0])
    normalised = post(
        client,
        MODEL,
        image,
        methods=["deeplift"],
        output={"size": "model", "scores": "base64", "overlay": True},
    )["explanations"][0]
    scores = normalised["scores"]
    assert scores["normalized"] is True
    values = np.frombuffer(base64.b64decode(scores["base64"]), dtype="<f4").reshape(128, 128)
    # The same map divided by its largest magnitude: one rounding of each quotient, and the
    # round-off of computing the map again, in units of its peak.
    peak = np.abs(raw).max()
    np.testing.assert_allclose(values, raw / peak, rtol=0, atol=UNIT_ROUNDOFF + roundoff)
    # The overlay still renders from the normalised map.
    overlay = Image.open(io.BytesIO(base64.b64decode(normalised["overlay_png"])))
    assert overlay.size == (128, 128)

    pooled = post(client, MODEL, image, methods=["deeplift"], output={**RAW, "grid": 8})
    cells = np.frombuffer(
        base64.b64decode(pooled["explanations"][0]["scores"]["base64"]), dtype="<f4"
    ).reshape(8, 8)
    # Cell sums, each rounded once to float32, of a map computed again.
    blocks = raw.reshape(8, 16, 8, 16)
    tolerance = (UNIT_ROUNDOFF + roundoff) * np.abs(blocks).sum(axis=(1, 3))
    assert bool((np.abs(cells - blocks.sum(axis=(1, 3))) <= tolerance).all())
    total_tolerance = (UNIT_ROUNDOFF + roundoff) * np.abs(raw).sum()
    assert abs(cells.astype(np.float64).sum() - raw.sum()) <= total_tolerance


def test_raw_scores_need_the_model_size(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/explanations",
        json={
            "model": MODEL,
            "image": base64.b64encode(lesion_images()[0]).decode(),
            "methods": ["deeplift"],
            "output": {"normalize": False},
        },
    )
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    assert "size" in json.dumps(problem["errors"])
