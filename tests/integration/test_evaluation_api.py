"""`"evaluate": true` on the real stack: each explanation's faithfulness figures, reproduced by a
plain loop over the returned raw map with the demo model in-process; the same figures through
multipart forms and KServe; the cost and caveats in `GET /v1/methods`."""

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from scipy import ndimage

from workers.demo.data import make_sample, to_png_bytes
from workers.demo.model import build_lesion_net

MODEL = "demo-lesions"
DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"
STEPS = 10  # schemas.evaluation.EVALUATION_STEPS, spelled out: the test states the definition
EPS32 = float(np.finfo(np.float32).eps)
RAW = {"scores": "base64", "size": "model", "normalize": False, "overlay": False}


def lesion_png() -> bytes:
    sample = next(s for s in map(make_sample, range(20, 80)) if s.label == 2)
    return to_png_bytes(sample.image)


def demo_model() -> torch.nn.Module:
    model = build_lesion_net(num_classes=3, width=16)
    model.load_state_dict(safetensors.torch.load_file(DEMO / "model.safetensors"))
    return model.eval().requires_grad_(False)


def probability(model: torch.nn.Module, image: np.ndarray, target: int) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(image.astype(np.float32))[None, None])[0].double()
    return float(torch.softmax(logits, dim=0)[target])


def plain_figures(
    model: torch.nn.Module, image: np.ndarray, saliency: np.ndarray, target: int, fill: np.ndarray
) -> dict[str, float]:
    """Petsiuk et al.'s curves one image at a time: pixels most relevant first (ties in row-major
    order), removed into `fill` or restored into the blurred image; trapezoid areas over [0, 1]."""
    order = np.argsort(-saliency.ravel(), kind="stable")
    sigma = 0.05 * image.shape[0]
    start = ndimage.gaussian_filter(
        image, sigma, mode="mirror", truncate=np.ceil(3 * sigma) / sigma
    )
    deleted, inserted = [], []
    for k in range(STEPS + 1):
        chosen = order[: round(k * image.size / STEPS)]
        removed, restored = image.copy().ravel(), start.copy().ravel()
        removed[chosen] = fill.ravel()[chosen]
        restored[chosen] = image.ravel()[chosen]
        deleted.append(probability(model, removed.reshape(image.shape), target))
        inserted.append(probability(model, restored.reshape(image.shape), target))
    fractions = np.linspace(0, 1, STEPS + 1)
    return {
        "deletion_auc": float(np.trapezoid(deleted, fractions)),
        "insertion_auc": float(np.trapezoid(inserted, fractions)),
        "top10_drop": deleted[0] - deleted[1],
    }


def raw_map(explanation: dict[str, object]) -> np.ndarray:
    scores = explanation["scores"]
    assert isinstance(scores, dict)
    values = np.frombuffer(base64.b64decode(scores["base64"]), dtype="<f4")
    return values.reshape(scores["shape"]).astype(np.float64)


def post(client: httpx.Client, **fields: object) -> dict[str, object]:
    body = {"model": MODEL, "image": base64.b64encode(lesion_png()).decode(), **fields}
    answer = client.post("/v1/explanations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


# The worker's float32 passes run batched, the loop's one image at a time: each logit of the demo
# network is reached through 4 convolutions of at most 3·3·64 = 576 products and a 64-term head,
# so the two differ by at most about (4·576 + 64) float32 roundings of the largest logit; a
# probability moves by at most the logits' difference, and an AUC is an average of them.
def bound(model: torch.nn.Module, image: np.ndarray) -> float:
    logits = probability_logit_scale(model, image)
    return (4 * 576 + 64) * EPS32 * (1 + logits)


def probability_logit_scale(model: torch.nn.Module, image: np.ndarray) -> float:
    with torch.no_grad():
        return float(model(torch.from_numpy(image.astype(np.float32))[None, None]).abs().max())


def test_evaluation_figures_match_a_plain_loop(client: httpx.Client) -> None:
    result = post(
        client,
        methods=["gradcam", "deeplift"],
        params={"deeplift": {"baseline": "mean"}},
        target=[1, 2],
        output=RAW,
        evaluate=True,
    )
    pixels = np.asarray(Image.open(io.BytesIO(lesion_png())), dtype=np.float64) / 255.0
    image = (pixels - 0.5) / 0.25
    model = demo_model()
    fills = {
        "gradcam": np.full_like(image, (0.0 - 0.5) / 0.25),
        "deeplift": np.full_like(image, image.mean()),
    }
    explanations = result["explanations"]
    assert isinstance(explanations, list) and len(explanations) == 4
    tolerance = bound(model, image)
    for explanation in explanations:
        figures = explanation["evaluation"]
        assert set(figures) == {"deletion_auc", "insertion_auc", "top10_drop"}
        expected = plain_figures(
            model,
            image,
            raw_map(explanation),
            explanation["target"]["class_index"],
            fills[explanation["method"]],
        )
        for name, value in expected.items():
            assert figures[name] == pytest.approx(value, abs=tolerance), (
                explanation["method"],
                name,
            )
    # The maps explain the mass: removing their top 10 % must cost the mass class probability.
    mass_gradcam = next(
        e for e in explanations if e["method"] == "gradcam" and e["target"]["class_index"] == 2
    )
    assert mass_gradcam["evaluation"]["top10_drop"] > 0

    plain = post(client, methods=["gradcam"], target=[1, 2], output=RAW)
    assert all(e["evaluation"] is None for e in plain["explanations"])  # type: ignore[union-attr]


def test_evaluate_through_multipart_forms_and_kserve(client: httpx.Client) -> None:
    expected = post(client, methods=["saliency"], output=RAW, evaluate=True)["explanations"]
    assert isinstance(expected, list)
    reference = expected[0]["evaluation"]
    form = client.post(
        "/v1/explanations",
        files={"image": ("scan.png", lesion_png(), "image/png")},
        data={"model": MODEL, "methods": "saliency", "evaluate": "true"},
        timeout=120,
    )
    assert form.status_code == 200, form.text
    kserve = client.post(
        f"/v1/models/{MODEL}:explain",
        json={
            "instances": [{"image": base64.b64encode(lesion_png()).decode()}],
            "parameters": {"methods": ["saliency"], "evaluate": True},
        },
        timeout=120,
    )
    assert kserve.status_code == 200, kserve.text
    for figures in (
        form.json()["explanations"][0]["evaluation"],
        kserve.json()["explanations"][0][0]["evaluation"],
    ):
        for name, value in reference.items():
            # The same image and map through the same batched passes.
            assert figures[name] == pytest.approx(value, abs=1e-6), name
    refused = client.post(
        "/v1/explanations",
        json={"model": MODEL, "image": base64.b64encode(lesion_png()).decode(), "evaluate": "yes"},
    )
    assert refused.status_code == 422, refused.text


def test_methods_list_the_evaluation_cost_and_the_caveats(client: httpx.Client) -> None:
    answer = client.get("/v1/methods")
    assert answer.status_code == 200, answer.text
    methods = {spec["id"]: spec for spec in answer.json()}
    explained = [s for s in methods.values() if s["endpoint"] == "POST /v1/explanations"]
    assert {spec["evaluation_passes"] for spec in explained} == {2 * (STEPS + 1)}
    assert methods["activation_max"]["evaluation_passes"] is None
    for method in ("guided_backprop", "guided_gradcam"):
        assert any("Adebayo" in caveat for caveat in methods[method]["caveats"]), method
    assert methods["gradcam"]["caveats"] == []
