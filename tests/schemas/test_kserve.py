import pytest
from pydantic import ValidationError

from schemas.kserve import MAX_INSTANCES, KServeExplainRequest


def parse(body: dict[str, object]) -> KServeExplainRequest:
    return KServeExplainRequest.model_validate(body)


def test_an_image_is_plain_base64_a_b64_object_or_torchserves_data() -> None:
    parsed = parse({"instances": [{"image": "aGk="}, {"image": {"b64": "aGk="}}, {"data": "aGk="}]})
    assert [instance.image for instance in parsed.instances] == ["aGk="] * 3


def test_an_instances_target_and_dicom_win_over_the_shared_parameters() -> None:
    parsed = parse(
        {
            "instances": [
                {"image": "aGk="},
                {"image": "aGk=", "target": [0, 2], "dicom": {"frame": 1}},
            ],
            "parameters": {"methods": ["saliency"], "target": "top2", "output": {"grid": 4}},
        }
    )
    first, second = (parsed.options("m", instance) for instance in parsed.instances)
    assert first.target == "top2" and first.dicom is None
    assert second.target == [0, 2] and second.dicom is not None and second.dicom.frame == 1
    for options in (first, second):
        assert options.model == "m" and options.methods == ["saliency"]
        assert options.output.grid == 4


def test_defaults_are_those_of_the_explain_request() -> None:
    parsed = parse({"instances": [{"image": "aGk="}]})
    options = parsed.options("m", parsed.instances[0])
    assert options.methods == ["gradcam"] and options.target == "top1"
    assert options.output.normalize and options.output.size == "original"


@pytest.mark.parametrize(
    "body",
    [
        {"instances": []},
        {"instances": [{"image": "aGk="}] * (MAX_INSTANCES + 1)},
        {"instances": [{"image": ""}]},
        {"instances": [{"image": {"b64": ""}}]},
        {"instances": [{"image": {"b64": "aGk=", "mime": "png"}}]},
        {"instances": [{"image": "aGk=", "data": "aGk="}]},
        {"instances": [{"image": "aGk=", "target": "top9"}]},
        {"instances": [{"image": "aGk=", "methods": ["saliency"]}]},
        {"instances": [{"image": "aGk="}], "parameters": {"model": "m"}},
        {"instances": [{"image": "aGk="}], "parameters": {"methods": ["nope"]}},
        {"instances": [{"image": "aGk="}], "parameters": {"output": {"normalize": False}}},
        {"instances": [{"image": "aGk="}], "signature_name": "serving_default"},
    ],
)
def test_bad_shapes_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse(body)
