"""The typed answers: maps from either score encoding, images decoded, unknown fields kept."""

import base64
import io

import numpy as np
import pytest
from glimpse_client.results import ExplainResult, Job, Scores, Visualization
from PIL import Image


def b64_png(size: tuple[int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


MAP = np.arange(12, dtype=np.float32).reshape(3, 4) / 11


def scores(**encoding: object) -> dict[str, object]:
    return {"shape": [3, 4], "min": 0.0, "max": 1.0, "signed": False, **encoding}


def answer(**explanation: object) -> dict[str, object]:
    return {
        "job_id": "j",
        "model": {"id": "m", "version": "1"},
        "predictions": [{"class_index": 1, "label": "nodule", "score": 0.9}],
        "explanations": [
            {"method": "gradcam", "target": {"class_index": 1, "label": "nodule"}, **explanation}
        ],
        "timings": {"queue_ms": 1, "compute_ms": 2, "render_ms": 3, "total_ms": 6},
        "provenance": {"model_sha256": "0" * 64, "service_version": "0.1.0", "params": {}},
        "from_a_newer_service": True,
    }


def test_base64_scores_decode_little_endian_float32_row_major() -> None:
    packed = base64.b64encode(MAP.astype("<f4").tobytes()).decode()
    decoded = Scores.model_validate(scores(base64=packed)).array()
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, MAP)


def test_json_scores_decode_to_the_same_array() -> None:
    decoded = Scores.model_validate(scores(values=MAP.tolist())).array()
    np.testing.assert_array_equal(decoded, MAP)


def test_scores_without_values_say_so() -> None:
    with pytest.raises(ValueError, match="neither"):
        Scores.model_validate(scores()).array()


def test_an_explain_result_decodes_maps_and_images_and_keeps_its_json() -> None:
    data = answer(scores=scores(values=MAP.tolist()), overlay_png=b64_png((4, 3)))
    result = ExplainResult.from_json(data)
    explanation = result.explanation("gradcam")
    assert explanation.map is not None and explanation.map.shape == (3, 4)
    assert explanation.overlay is not None and explanation.overlay.size == (4, 3)
    assert explanation.heatmap is None
    assert result.raw is data
    assert result.model_extra == {"from_a_newer_service": True}
    with pytest.raises(KeyError):
        result.explanation("saliency")


def test_an_explanation_without_scores_has_no_map() -> None:
    result = ExplainResult.from_json(answer())
    assert result.explanations[0].map is None and result.explanations[0].overlay is None


def test_derived_dicom_objects_decode_to_their_bytes() -> None:
    files = {"segmentation": b"\x00" * 128 + b"DICM seg", "parametric_map": b"DICM pm"}
    encoded = {kind: base64.b64encode(data).decode() for kind, data in files.items()}

    explanation = ExplainResult.from_json(answer(dicom=encoded)).explanations[0]

    assert explanation.dicom_files == files
    assert ExplainResult.from_json(answer()).explanations[0].dicom_files == {}


def test_a_job_result_is_an_explanation_or_a_visualization() -> None:
    explained = Job.from_json({"job_id": "j", "status": "succeeded", "result": answer()})
    assert isinstance(explained.result, ExplainResult)
    assert explained.status.finished
    picture = {
        "model": {"id": "m", "version": "1"},
        "image_png": b64_png((8, 8)),
        "target": {"kind": "class", "class_index": 1, "label": "nodule"},
        "activation": 3.0,
        "probability": 0.7,
        "steps": 4,
    }
    visualized = Job.from_json({"job_id": "v", "status": "succeeded", "result": picture})
    assert isinstance(visualized.result, Visualization)
    assert visualized.result.image.size == (8, 8)
    queued = Job.from_json({"job_id": "q", "status": "queued"})
    assert queued.result is None and not queued.status.finished
