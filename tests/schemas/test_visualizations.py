"""The visualization request's rules, its JSON Schema, and the response shape."""

import pytest
from pydantic import ValidationError

from schemas.explain import ModelRef
from schemas.visualizations import (
    ChannelObjective,
    ClassObjective,
    VisualizationParams,
    VisualizationProvenance,
    VisualizationResponse,
)


def test_defaults_follow_the_contract() -> None:
    parsed = VisualizationParams.model_validate({"target": 2})

    assert parsed.model_dump() == {
        "target": 2,
        "layer": None,
        "channel": None,
        "steps": 256,
        "lr": 0.05,
        "size": None,
        "seed": 0,
        "jitter": 8,
        "scale": [0.95, 0.975, 1.0, 1.025, 1.05],
        "rotate": 5.0,
        "l2": 0.0,
        "tv": 0.0,
        "decorrelate": True,
    }


def test_a_layer_and_channel_objective() -> None:
    parsed = VisualizationParams.model_validate_json('{"layer": "layer4.2", "channel": 7}')
    assert (parsed.target, parsed.layer, parsed.channel) == (None, "layer4.2", 7)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"target": 1, "layer": "x", "channel": 0},
        {"layer": "x"},
        {"channel": 3},
        {"target": 1, "channel": 3},
        {"target": -1},
        {"target": "1"},
        {"target": 1, "steps": 0},
        {"target": 1, "lr": 0.0},
        {"target": 1, "size": 8},
        {"target": 1, "scale": []},
        {"target": 1, "scale": [5.0]},
        {"target": 1, "rotate": 200.0},
        {"target": 1, "l2": -1.0},
        {"target": 1, "unknown": True},
    ],
)
def test_rejects(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VisualizationParams.model_validate(fields)


def test_the_json_schema_describes_every_parameter() -> None:
    schema = VisualizationParams.model_json_schema()

    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(VisualizationParams.model_fields)
    assert schema["properties"]["steps"]["default"] == 256


def test_the_batch_key_ignores_only_the_objective_and_the_seed() -> None:
    base = VisualizationParams(target=0)

    assert VisualizationParams(layer="a", channel=3, seed=9).batch_key() == base.batch_key()
    assert VisualizationParams(target=0, steps=10).batch_key() != base.batch_key()
    assert VisualizationParams(target=0, scale=[1.0]).batch_key() != base.batch_key()
    assert hash(base.batch_key())


def test_a_response_round_trips_with_either_kind_of_target() -> None:
    params = VisualizationParams(layer="features.3", channel=1)
    for target in (
        ClassObjective(class_index=1, label="nodule"),
        ChannelObjective(layer="features.3", channel=1),
    ):
        response = VisualizationResponse(
            model=ModelRef(id="demo-lesions", version="1"),
            image_png="iVBORw0KGgo=",
            target=target,
            activation=3.5,
            probability=0.97 if isinstance(target, ClassObjective) else None,
            steps=256,
            compute_ms=1234.5,
            provenance=VisualizationProvenance(
                model_sha256="ab" * 32, service_version="0.1.0", device="cpu", params=params
            ),
        )

        again = VisualizationResponse.model_validate_json(response.model_dump_json())

        assert again == response
        assert again.target.kind == target.kind
