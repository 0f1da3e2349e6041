"""Region targets as the API takes them (`schemas.regions`, `schemas.explain.check_target`)."""

import pytest
from pydantic import ValidationError

from schemas.explain import ExplainParameters, OutputOptions, target_classes
from schemas.jobs import ExplanationJob
from schemas.regions import RegionTarget


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ({"class": 3}, "predicted"),
        ({"class": 3, "region": "predicted"}, "predicted"),
        ({"class": 0, "box": [0, 1, 2, 3]}, "box"),
        ({"class": 1, "mask": "iVBORw0KGgo="}, "mask"),
    ],
)
def test_a_region_target_names_a_class_and_one_region(target: dict[str, object], kind: str) -> None:
    parsed = ExplainParameters(target=target).target  # type: ignore[arg-type]
    assert isinstance(parsed, RegionTarget)
    assert parsed.kind == kind
    assert target_classes(parsed) == [target["class"]]


@pytest.mark.parametrize(
    "target",
    [
        {"class": -1},
        {"class": True},
        {"class": 1, "box": [0, 0, 4, 4], "mask": "iVBORw0KGgo="},
        {"class": 1, "region": "predicted", "box": [0, 0, 4, 4]},
        {"class": 1, "box": [4, 0, 4, 4]},
        {"class": 1, "box": [0, 5, 4, 2]},
        {"class": 1, "box": [-1, 0, 4, 4]},
        {"class": 1, "box": [0, 0, 4]},
        {"class": 1, "box": [0.5, 0, 4, 4]},
        {"class": 1, "region": "box"},
        {"class": 1, "mask": ""},
        {"klass": 1},
    ],
)
def test_a_malformed_region_target_is_refused(target: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ExplainParameters(target=target)  # type: ignore[arg-type]


def test_a_region_target_travels_in_a_job_and_comes_back_equal() -> None:
    target = RegionTarget.model_validate({"class": 2, "box": [1, 2, 3, 4]})
    job = ExplanationJob(
        job_id="j",
        model="m",
        methods=["saliency"],
        target=target,
        params={},
        output=OutputOptions(),
        enqueued_at=0.0,
    )
    assert ExplanationJob.model_validate_json(job.model_dump_json()).target == target
