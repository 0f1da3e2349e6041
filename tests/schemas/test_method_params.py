"""Every method's numeric parameters, swept from the published JSON Schema: non-finite, huge and
negative values are refused, each bound is documented and is exactly where validation refuses,
and an admitted value reaches the worker unchanged."""

import json

import pytest
from parameter_sweep import (  # type: ignore[import-not-found]
    ACTIVATION_MAX,
    HOSTILE,
    PARAMS,
    NumericParameter,
    numeric_parameters,
    parsed,
)
from pydantic import ValidationError

from schemas.explain import ExplainParameters
from schemas.methods import MAX_SEED, method_catalogue

PARAMETERS = numeric_parameters()


def admission(parameter: NumericParameter, value: str) -> dict[str, object] | ValidationError:
    """The parameters as the gateway's validation admits them, or its refusal."""
    params = parameter.params_json(value)
    try:
        if parameter.method == ACTIVATION_MAX:
            return PARAMS[ACTIVATION_MAX].model_validate_json(params).model_dump()
        request = ExplainParameters.model_validate_json(
            f'{{"methods": ["{parameter.method}"], "params": {{"{parameter.method}": {params}}}}}'
        )
    except ValidationError as refused:
        return refused
    return request.applied_params()[parameter.method]


def test_the_sweep_finds_the_parameters_that_were_let_through() -> None:
    names = {str(parameter) for parameter in PARAMETERS}
    assert {"activation_max.tv", "activation_max.scale", "lrp.epsilon", "smoothgrad.seed"} <= names
    # Every method with a number in its parameters, from the catalogue the API publishes.
    with_numbers = {
        spec.id
        for spec in method_catalogue()
        if any(
            "integer" in json.dumps(prop) or "number" in json.dumps(prop)
            for prop in spec.parameters["properties"].values()  # type: ignore[attr-defined]
        )
    }
    assert with_numbers | {ACTIVATION_MAX} == {parameter.method for parameter in PARAMETERS}


@pytest.mark.parametrize("parameter", PARAMETERS, ids=str)
def test_every_number_has_documented_bounds(parameter: NumericParameter) -> None:
    assert parameter.minimum is not None and parameter.maximum is not None
    if parameter.name == "seed":
        assert (parameter.minimum, parameter.maximum) == (0, MAX_SEED)


@pytest.mark.parametrize("parameter", PARAMETERS, ids=str)
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_naming_the_parameter(
    parameter: NumericParameter, value: str
) -> None:
    answer = admission(parameter, value)
    assert isinstance(answer, ValidationError), f"{parameter} = {value} was admitted"
    assert parameter.name in str(answer)


@pytest.mark.parametrize("parameter", PARAMETERS, ids=str)
def test_validation_refuses_exactly_outside_the_published_bounds(
    parameter: NumericParameter,
) -> None:
    for value, allowed in parameter.edges():
        answer = admission(parameter, value)
        assert isinstance(answer, dict) == allowed, f"{parameter} = {value}"
        if isinstance(answer, dict):
            admitted = answer[parameter.name]
            # What the worker will read: the job message is JSON.
            assert json.loads(json.dumps(admitted)) == admitted
            assert admitted == ([parsed(value)] if parameter.in_list else parsed(value))
