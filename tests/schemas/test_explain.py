import json

import jsonschema
import pytest
from pydantic import ValidationError

from schemas.explain import ExplainOptions, ExplainRequest, most_probable, resolve_target
from schemas.jobs import JobState
from schemas.methods import PARAMS_BY_METHOD, method_catalogue


def request(**fields: object) -> ExplainRequest:
    return ExplainRequest.model_validate({"model": "m", "image": "aGk=", **fields})


def test_defaults_follow_the_contract() -> None:
    parsed = request()
    assert parsed.methods == ["gradcam"]
    assert parsed.target == "top1"
    assert parsed.output.overlay and not parsed.output.heatmap
    assert parsed.output.scores == "json" and parsed.output.size == "original"
    assert parsed.output.alpha == 0.45
    assert parsed.output.normalize
    assert parsed.top_k() == 1 and parsed.class_indices() is None


@pytest.mark.parametrize(
    ("target", "classes", "k"),
    [("top3", None, 3), (2, [2], 0), ([0, 4], [0, 4], 0), ("top5", None, 5)],
)
def test_targets(target: object, classes: list[int] | None, k: int) -> None:
    parsed = request(target=target)
    assert parsed.class_indices() == classes
    assert parsed.top_k() == k


@pytest.mark.parametrize(
    ("target", "classes"),
    [("top1", [3]), ("top3", [3, 0, 4]), (2, [2]), ([4, 1], [4, 1]), ("top5", [3, 0, 4, 1, 2])],
)
def test_a_target_resolves_to_its_classes_given_the_probabilities(
    target: object, classes: list[int]
) -> None:
    probabilities = [0.2, 0.05, 0.01, 0.6, 0.14]
    assert resolve_target(request(target=target).target, probabilities) == classes


def test_the_most_probable_classes_come_in_order_and_a_tie_goes_to_the_lower_index() -> None:
    assert most_probable([0.25, 0.5, 0.25, 0.0], 3) == [1, 0, 2]
    assert most_probable([0.3, 0.3, 0.4], 2) == [2, 0]
    assert most_probable([0.5, 0.5], 5) == [0, 1]


@pytest.mark.parametrize(
    "fields",
    [
        {"target": "top6"},
        {"target": "best"},
        {"target": -1},
        {"target": [1, 1]},
        {"target": []},
        {"methods": ["nope"]},
        {"methods": []},
        {"methods": ["gradcam", "gradcam"]},
        {"params": {"saliency": {"abs": True}}},
        {"params": {"gradcam": {"unknown": 1}}},
        {"output": {"scores": "xml"}},
        {"output": {"grid": 0}},
        {"output": {"normalize": False}},
        {"output": {"normalize": False, "size": "original"}},
        {"extra": 1},
    ],
)
def test_invalid_fields_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        request(**fields)


def test_raw_scores_are_accepted_at_the_model_size() -> None:
    output = request(output={"normalize": False, "size": "model", "grid": 8}).output
    assert not output.normalize and output.size == "model" and output.grid == 8


def test_applied_params_fill_defaults_and_options_drop_the_image() -> None:
    parsed = request(methods=["gradcam", "saliency"], params={"saliency": {"abs": False}})
    assert parsed.applied_params() == {"gradcam": {"layer": None}, "saliency": {"abs": False}}
    options = parsed.options()
    assert isinstance(options, ExplainOptions) and not hasattr(options, "image")
    assert options.methods == parsed.methods


def test_catalogue_describes_every_method() -> None:
    catalogue = {spec.id: spec for spec in method_catalogue()}
    assert set(catalogue) == set(PARAMS_BY_METHOD)
    assert catalogue["gradcam"].parameters["type"] == "object"
    assert all(spec.description and spec.passes for spec in catalogue.values())


def test_job_states() -> None:
    assert not JobState.QUEUED.finished and not JobState.RUNNING.finished
    assert JobState.SUCCEEDED.finished and JobState.FAILED.finished and JobState.CANCELLED.finished


@pytest.mark.parametrize(
    "output",
    [
        {"alpha": False},
        {"alpha": "0.5"},
        {"overlay": 1},
        {"heatmap": "true"},
        {"normalize": 0, "size": "model"},
        {"grid": 8.0},
        {"grid": True},
    ],
)
def test_output_booleans_and_numbers_are_strict(output: dict[str, object]) -> None:
    body = {"model": "m", "image": "AAAA", "output": output}
    with pytest.raises(ValidationError):
        ExplainRequest.model_validate_json(json.dumps(body))


@pytest.mark.parametrize("target", [True, 1.0, [True], [1, 2.0]])
def test_a_target_is_never_a_boolean_or_a_float(target: object) -> None:
    with pytest.raises(ValidationError):
        ExplainRequest.model_validate_json(
            json.dumps({"model": "m", "image": "AAAA", "target": target})
        )


# Params for a method not requested are refused but not stated in the schema (see PARAMS_SCHEMA).
SCHEMA_CASES = [
    {},
    {"methods": ["gradcam", "saliency"], "params": {"saliency": {"abs": False}}},
    {"params": {"gradcam": {"layer": "features.4"}}},
    {"methods": []},
    {"methods": ["gradcam", "gradcam"]},
    {"methods": ["no-such-method"]},
    {"params": {"no-such-method": {}}},
    {"methods": ["rise"], "params": {"rise": {"masks": 0}}},
    {"methods": ["rise"], "params": {"rise": {"unknown": 1}}},
    {"target": "top5"},
    {"target": "top6"},
    {"target": "best"},
    {"target": 0},
    {"target": -1},
    {"target": [0, 2]},
    {"target": [1, 1]},
    {"target": []},
    {"target": [0, 1, 2, 3, 4, 5]},
    {"output": {"normalize": False, "size": "model"}},
    {"output": {"normalize": False}},
    {"output": {"normalize": False, "size": "original"}},
    {"output": {"normalize": True, "size": "original"}},
]


@pytest.mark.parametrize("fields", SCHEMA_CASES)
def test_the_json_schema_accepts_exactly_what_the_model_accepts(fields: dict[str, object]) -> None:
    body = {"model": "m", "image": "aGk=", **fields}
    try:
        ExplainRequest.model_validate(body)
        accepted = True
    except ValidationError:
        accepted = False

    schema_errors = list(
        jsonschema.Draft202012Validator(ExplainRequest.model_json_schema()).iter_errors(body)
    )

    assert (not schema_errors) == accepted, schema_errors
