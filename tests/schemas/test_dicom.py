"""The request's `dicom` options and their way into the job message."""

import pytest
from pydantic import ValidationError

from schemas.dicom import DicomOptions, DicomWindow
from schemas.explain import ExplainRequest, OutputOptions
from schemas.jobs import JOB_MESSAGE, ExplanationJob


def test_the_dicom_field_is_optional_and_travels_to_the_worker() -> None:
    assert ExplainRequest.model_validate({"model": "m", "image": "aGk="}).dicom is None
    parsed = ExplainRequest.model_validate(
        {
            "model": "m",
            "image": "aGk=",
            "dicom": {"frame": 2, "window": {"center": 40, "width": 400}},
        }
    )
    options = parsed.options()
    assert options.dicom == DicomOptions(frame=2, window=DicomWindow(center=40, width=400))

    job = ExplanationJob(
        job_id="j",
        model="m",
        enqueued_at=0.0,
        methods=["gradcam"],
        target="top1",
        params={},
        output=OutputOptions(),
        dicom=options.dicom,
    )
    assert JOB_MESSAGE.validate_json(job.model_dump_json()) == job


@pytest.mark.parametrize(
    "dicom",
    [
        {"frame": -1},
        {"window": {"center": 40, "width": 0.5}},
        {"window": {"center": 40}},
        {"frame": 0, "slice": 3},
        {"window": {"center": 40, "width": 400, "function": "sigmoid"}},
    ],
)
def test_invalid_dicom_options_are_refused(dicom: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ExplainRequest.model_validate({"model": "m", "image": "aGk=", "dicom": dicom})
