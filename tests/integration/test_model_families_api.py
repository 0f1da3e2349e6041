"""Multi-label and logit outputs, and degenerate maps flagged, through the real stack: a gateway,
a worker process and Redis serving tiny models whose answers are known by construction."""

import base64
import io
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicom_files import dicom_file  # type: ignore[import-not-found]
from family_models import (  # type: ignore[import-not-found]
    SIZE,
    frame_means_weights,
    linear_weights,
    multi_label_logits,
    multi_label_weights,
    negative_evidence_weights,
    write_model,
)
from PIL import Image
from private_stacks import private_stack  # type: ignore[import-not-found]

from service.devstack import DevStack
from workers.render import WARNING_BACKGROUND, WARNING_INK

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "models" / "demo-lesions"
EPS32 = float(np.finfo(np.float32).eps)
FINDINGS = ["effusion", "nodule", "fracture"]
INPUT_2 = {"channels": 2, "height": SIZE, "width": SIZE, "mean": [0.0, 0.0], "std": [1.0, 1.0]}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("family-models")
    head = {"channels": 2, "classes": 3}
    write_model(
        root, "multi-label", multi_label_weights(), head, FINDINGS, {"activation": "sigmoid"}
    )
    write_model(root, "raw-logits", multi_label_weights(), head, FINDINGS, {"activation": "none"})
    write_model(root, "softmax", multi_label_weights(), head, FINDINGS)
    two = ["a", "b"]
    linear = {"channels": 1, "classes": 2, "nonlinearity": "none"}
    write_model(root, "linear", linear_weights(), linear, two)
    write_model(root, "root", linear_weights(), {**linear, "nonlinearity": "sqrt"}, two)
    negative = {"channels": 2, "classes": 2, "kernel": 3}
    write_model(root, "negative-evidence", negative_evidence_weights(), negative, two)
    two_channels = {"channels": 2, "classes": 2, "nonlinearity": "none", "in_channels": 2}
    for model_id, frames in (("frame-means", "consecutive"), ("frame-list", [2, 0])):
        spec = {**INPUT_2, "frames": frames}
        write_model(root, model_id, frame_means_weights(), two_channels, two, model_input=spec)
    (root / "demo-lesions").symlink_to(DEMO)
    return root


@pytest.fixture(scope="module")
def stack(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    logs = tmp_path_factory.mktemp("family-logs")
    with private_stack(repository, logs, {"PYTHONPATH": str(HERE)}) as running:
        yield running


@pytest.fixture()
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


def random_png(seed: int) -> tuple[str, np.ndarray]:
    """A SIZE×SIZE grey PNG (base64) with black and bright pixels, and its pixels in [0, 1]."""
    levels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    levels[:2] = 0
    buffer = io.BytesIO()
    Image.fromarray(levels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), levels.astype(np.float64) / 255


def explain(client: httpx.Client, model: str, image: str, **fields: object) -> dict:
    answer = client.post("/v1/explanations", json={"model": model, "image": image, **fields})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def overlay_pixels(explanation: dict) -> np.ndarray:
    data = base64.b64decode(explanation["overlay_png"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_marked(overlay: np.ndarray) -> None:
    """The warning box in the top-left corner: its background at the corner (no blend of a
    picture and a colour map is pure black there), ink in the top rows, nothing else."""
    assert tuple(overlay[0, 0]) == WARNING_BACKGROUND
    corner = {tuple(pixel) for pixel in overlay[: SIZE // 2, :4].reshape(-1, 3)}
    assert corner <= {WARNING_BACKGROUND, WARNING_INK}
    assert WARNING_INK in {tuple(pixel) for pixel in overlay[: SIZE // 2].reshape(-1, 3)}


def logit_bound(logit: float) -> float:
    # A float32 mean of SIZE² pixels, one scale and a bias: ≤ (SIZE² + 4) eps32 of the magnitudes.
    return (SIZE * SIZE + 4) * EPS32 * (abs(logit) + 3)


def test_a_sigmoid_head_reports_each_labels_probability_and_explains_both_findings(
    client: httpx.Client,
) -> None:
    image, pixels = random_png(1)
    logits = multi_label_logits(float(pixels.mean()))

    answer = explain(client, "multi-label", image, target="top2", methods=["gradcam"])

    predictions = answer["predictions"]
    assert [p["class_index"] for p in predictions] == [0, 1, 2]
    for prediction in predictions:
        expected = logits[prediction["class_index"]]
        assert abs(prediction["logit"] - expected) <= logit_bound(expected)
        probability = 1 / (1 + math.exp(-prediction["logit"]))
        assert abs(prediction["score"] - probability) <= 4 * EPS32
    scores = [p["score"] for p in predictions]
    # Two findings at once, which no softmax over the labels could say.
    assert scores[0] > 0.5 and scores[1] > 0.5 > scores[2]
    assert sum(scores) > 1
    assert [e["target"]["label"] for e in answer["explanations"]] == ["effusion", "nodule"]

    info = client.get("/v1/models/multi-label").json()
    assert info["output"] == {"activation": "sigmoid", "key": None}
    assert client.get("/v1/models/softmax").json()["output"] == {
        "activation": "softmax",
        "key": None,
    }


def test_with_no_activation_the_score_is_the_logit_and_softmax_stays_the_default(
    client: httpx.Client,
) -> None:
    image, pixels = random_png(2)
    logits = multi_label_logits(float(pixels.mean()))

    raw = explain(client, "raw-logits", image, methods=["saliency"], target=2)["predictions"]
    softmax = explain(client, "softmax", image, methods=["saliency"], target=2)["predictions"]

    assert [p["score"] for p in raw] == [p["logit"] for p in raw]
    assert [p["class_index"] for p in raw] == [0, 1, 2]
    exps = [math.exp(logit) for logit in logits]
    for prediction in softmax:
        expected = exps[prediction["class_index"]] / sum(exps)
        assert abs(prediction["score"] - expected) <= 1e-5
    assert abs(sum(p["score"] for p in softmax) - 1) <= 1e-6


def test_a_healthy_map_carries_no_warning_and_no_mark(client: httpx.Client) -> None:
    image, _ = random_png(3)

    (explanation,) = explain(client, "multi-label", image, methods=["saliency"])["explanations"]

    assert explanation["checks"] is None
    assert tuple(overlay_pixels(explanation)[0, 0]) != WARNING_BACKGROUND


@pytest.mark.parametrize(
    ("model", "method", "kind", "reason"),
    [
        ("negative-evidence", "scorecam", "all_zero", "every channel weight was negative"),
        ("linear", "saliency", "constant", "one value everywhere"),
        ("root", "saliency", "non_finite", "NaN or infinite"),
    ],
)
def test_a_degenerate_map_is_flagged_in_checks_and_on_the_overlay(
    client: httpx.Client, model: str, method: str, kind: str, reason: str
) -> None:
    image, _ = random_png(4)

    answer = explain(client, model, image, methods=[method], target=0, evaluate=True)

    (explanation,) = answer["explanations"]
    checks = explanation["checks"]
    assert checks["degenerate"] == kind
    assert reason in checks["warning"]
    # Its pixels have no order to delete them by: no figures of an arbitrary one.
    assert explanation["evaluation"] is None
    assert_marked(overlay_pixels(explanation))
    values = np.asarray(explanation["scores"]["values"])
    assert np.isfinite(values).all()
    if kind == "all_zero":
        assert not values.any()
    if kind == "non_finite":
        # NaN where the pixels are black (the top two rows), shown as 0; finite elsewhere.
        assert not values[:2].any() and values[2:].all()


def test_integrated_gradients_that_did_not_converge_within_max_steps_is_flagged(
    client: httpx.Client,
) -> None:
    image, _ = random_png(5)
    params = {"integrated_gradients": {"steps": 4, "max_steps": 4, "tolerance": 0.0}}

    answer = explain(
        client,
        "demo-lesions",
        image,
        methods=["integrated_gradients"],
        params=params,
        evaluate=True,
    )

    (explanation,) = answer["explanations"]
    # A rough map still ranks its pixels: it is evaluated.
    assert set(explanation["evaluation"]) == {"deletion_auc", "insertion_auc", "top10_drop"}
    checks = explanation["checks"]
    assert checks["steps"] == 4
    assert checks["completeness_gap"] > 0 and checks["convergence"] > 0
    assert checks["degenerate"] == "not_converged"
    assert "max_steps" in checks["warning"]
    overlay = overlay_pixels(explanation)
    assert tuple(overlay[0, 0]) == WARNING_BACKGROUND
    assert WARNING_INK in {tuple(pixel) for pixel in overlay[:16].reshape(-1, 3)}


def multi_frame_dicom(frames: int, rows: int, columns: int) -> tuple[str, np.ndarray]:
    """A MONOCHROME2 16-bit multi-frame DICOM (base64) of random frames, and its stored values."""
    values = np.random.default_rng(frames * rows).integers(0, 4096, (frames, rows, columns))
    stored = values.astype(np.uint16)
    return base64.b64encode(dicom_file(stored, bits_stored=12)).decode(), stored


def windowed(frames: np.ndarray) -> np.ndarray:
    """Frames through the full-range window of all of them: (v − low) / (high − low)."""
    values = frames.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def test_a_two_channel_model_reads_consecutive_dicom_frames_as_its_channels(
    client: httpx.Client,
) -> None:
    image, stored = multi_frame_dicom(4, SIZE, SIZE)

    answer = explain(
        client,
        "frame-means",
        image,
        dicom={"frame": 1},
        methods=["integrated_gradients", "saliency"],
        target="top2",
    )

    # Logit c is the mean of channel c: frames 1 and 2, windowed together.
    channels = windowed(stored[1:3])
    logits = {p["class_index"]: p["logit"] for p in answer["predictions"]}
    for channel in (0, 1):
        expected = float(channels[channel].mean())
        assert abs(logits[channel] - expected) <= logit_bound(expected)
    assert answer["provenance"]["dicom"]["frame"] == 1
    for explanation in answer["explanations"]:
        assert explanation["scores"]["shape"] == [SIZE, SIZE]
        if explanation["method"] == "integrated_gradients":
            # A linear model: the trapezoid rule is exact, so the map sums to the logit's change.
            assert explanation["checks"]["completeness_gap"] <= 1e-5
    info = client.get("/v1/models/frame-means").json()
    assert info["input"]["channels"] == 2 and info["input"]["frames"] == "consecutive"


def test_a_manifests_frame_list_fixes_the_frames_and_their_order(client: httpx.Client) -> None:
    image, stored = multi_frame_dicom(3, SIZE, SIZE)

    answer = explain(client, "frame-list", image, methods=["saliency"])

    channels = windowed(stored[[2, 0]])
    logits = {p["class_index"]: p["logit"] for p in answer["predictions"]}
    for channel in (0, 1):
        expected = float(channels[channel].mean())
        assert abs(logits[channel] - expected) <= logit_bound(expected)


def test_the_overlay_of_a_multi_channel_input_is_at_the_inputs_size(client: httpx.Client) -> None:
    image, _ = multi_frame_dicom(2, 24, 20)

    answer = explain(client, "frame-means", image, methods=["gradcam"], output={"heatmap": True})

    (explanation,) = answer["explanations"]
    assert overlay_pixels(explanation).shape == (24, 20, 3)
    assert explanation["scores"]["shape"] == [24, 20]


@pytest.mark.parametrize(
    ("image", "detail"),
    [
        (random_png(6)[0], "a multi-frame MONOCHROME DICOM image"),
        (multi_frame_dicom(1, SIZE, SIZE)[0], "the file has 1 frame(s)"),
    ],
    ids=["png", "too-few-frames"],
)
def test_an_image_without_the_models_channels_is_a_422_naming_the_input_it_takes(
    client: httpx.Client, image: str, detail: str
) -> None:
    answer = client.post("/v1/explanations", json={"model": "frame-means", "image": image})

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "2 channels" in answer.json()["detail"]
    assert detail in answer.json()["detail"]
