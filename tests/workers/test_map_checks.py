"""Degenerate maps found by inspection, told in the method's words where it knows why, and
marked on the overlay."""

import base64
import io
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_files import ct_file  # type: ignore[import-not-found]
from PIL import Image
from pydicom import dcmread

from schemas.explain import MapChecks, OutputOptions
from schemas.jobs import ExplanationJob
from workers import render
from workers.demo.data import make_sample
from workers.dicom_objects import with_source_header
from workers.images import decode_image
from workers.map_checks import (
    degenerate_kind,
    finite_values,
    map_warning,
    orders_pixels,
    row_checks,
)
from workers.methods.base import AttributionMap, MapWarning
from workers.pipeline import ComputedMap, PreparedJob, _Row, render_explanations
from workers.repository import load_model

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (np.zeros((4, 4)), "all_zero"),
        (np.full((4, 4), 0.25), "constant"),
        (np.full((4, 4), -2.0), "constant"),
        (np.array([[1.0, np.nan], [0.0, 2.0]]), "non_finite"),
        (np.array([[1.0, np.inf], [0.0, 2.0]]), "non_finite"),
        (np.array([[0.0, 0.0], [0.0, 1e-30]]), None),
    ],
)
def test_inspection_names_the_kind(values: np.ndarray, kind: str | None) -> None:
    assert degenerate_kind(values) == kind


def test_the_methods_reason_is_used_only_for_the_failure_it_explains() -> None:
    noted = MapWarning("all_zero", "every weight was negative")

    assert map_warning(np.zeros((2, 2)), noted) == noted
    # A constant map is not what the method explained: inspection's own words.
    constant = map_warning(np.ones((2, 2)), noted)
    assert constant is not None and constant.kind == "constant"
    assert constant.reason != noted.reason
    # A method's warning about a map that looks fine (a quadrature not converged) stands.
    unconverged = MapWarning("not_converged", "gap above tolerance")
    assert map_warning(np.eye(2), unconverged) == unconverged
    assert map_warning(np.eye(2), None) is None


def test_row_checks_carry_the_figures_and_the_warnings_per_row() -> None:
    values = np.stack([np.eye(3), np.zeros((3, 3)), np.eye(3)]).astype(np.float32)
    attribution = AttributionMap(
        torch.from_numpy(values),
        signed=False,
        checks={"completeness_gap": torch.tensor([0.5, 0.25, float("nan")])},
    )

    checks = row_checks(attribution, values)

    assert checks[0] == MapChecks(completeness_gap=0.5)
    assert checks[1] is not None and checks[1].degenerate == "all_zero"
    assert checks[1].completeness_gap == 0.25 and checks[1].warning
    # A figure the method could not compute is absent, not NaN.
    assert checks[2] == MapChecks()
    assert row_checks(AttributionMap(torch.from_numpy(values), signed=False), values)[0] is None


def test_only_maps_that_rank_their_pixels_are_evaluated() -> None:
    assert orders_pixels(None) and orders_pixels(MapChecks(completeness_gap=0.01))
    assert orders_pixels(MapChecks(degenerate="not_converged", warning="gap above tolerance"))
    for kind in ("all_zero", "constant", "non_finite"):
        assert not orders_pixels(MapChecks(degenerate=kind, warning="it points at nothing"))


def test_non_finite_values_become_zero_and_the_others_stay() -> None:
    values = np.array([[1.5, np.nan], [-np.inf, 2.0]], dtype=np.float32)

    cleaned = finite_values(values)

    assert cleaned.tolist() == [[1.5, 0.0], [0.0, 2.0]]
    finite = np.eye(2, dtype=np.float32)
    assert finite_values(finite) is finite


@pytest.mark.parametrize("size", [(16, 16), (40, 200), (300, 120)])
def test_a_warning_is_burned_into_the_corner_and_nowhere_else(size: tuple[int, int]) -> None:
    display = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    values = np.random.default_rng(1).random(size)

    plain = decode(render.render_overlay(display, values, "jet", 0.45))
    marked = decode(render.render_overlay(display, values, "jet", 0.45, warning="all_zero"))

    changed = np.argwhere((plain != marked).any(axis=2))
    rows, columns = changed[:, 0].max() + 1, changed[:, 1].max() + 1
    box = marked[:rows, :columns].reshape(-1, 3)
    colours = {tuple(pixel) for pixel in box}
    # Only the box changed, it holds only its two colours, and both are there: text on a ground.
    assert colours == {render.WARNING_BACKGROUND, render.WARNING_INK}
    assert tuple(marked[0, 0]) == render.WARNING_BACKGROUND
    assert rows <= max(size[0] // 4, 14)
    np.testing.assert_array_equal(marked[rows:], plain[rows:])
    np.testing.assert_array_equal(marked[:, columns:], plain[:, columns:])


def test_each_kind_has_its_own_label() -> None:
    labels = render.WARNING_LABELS
    assert set(labels) == {"all_zero", "constant", "non_finite", "not_converged"}
    assert len(set(labels.values())) == len(labels)


def test_the_secondary_capture_carries_the_overlays_mark_and_every_object_names_it() -> None:
    model = load_model(DEMO, torch.device("cpu"))
    data = ct_file(make_sample(3).image)
    image = with_source_header(decode_image(data), data)
    kinds = ["secondary_capture", "parametric_map", "segmentation"]
    job = ExplanationJob.model_validate(
        {
            "job_id": uuid.uuid4().hex,
            "model": "demo-lesions",
            "enqueued_at": time.time(),
            "methods": ["scorecam"],
            "target": 1,
            "params": {"scorecam": {}},
            "output": OutputOptions(overlay=True, dicom=kinds),
        }
    )
    height, width = model.manifest.input.height, model.manifest.input.width
    checks = MapChecks(degenerate="all_zero", warning="every channel weight was negative")
    computed = ComputedMap(
        "scorecam", _Row(job=0, class_index=1), np.zeros((height, width)), False, 1.0, checks
    )

    (explanation,) = render_explanations(
        model, PreparedJob(job, image, time.time()), [computed]
    ).explanations

    assert explanation.overlay_png is not None and explanation.dicom is not None
    overlay = decode(base64.b64decode(explanation.overlay_png))
    assert tuple(overlay[0, 0]) == render.WARNING_BACKGROUND  # the corner is marked
    objects = {k: dcmread(io.BytesIO(base64.b64decode(v))) for k, v in explanation.dicom.items()}
    # The Secondary Capture is the response's overlay, its mark included, pixel for pixel.
    np.testing.assert_array_equal(objects["secondary_capture"].pixel_array, overlay)
    label = render.WARNING_LABELS["all_zero"]
    for kind in kinds:
        assert objects[kind].SeriesDescription.startswith(f"{label} scorecam"), kind
    assert "degenerate (all_zero)" in objects["secondary_capture"].DerivationDescription


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
