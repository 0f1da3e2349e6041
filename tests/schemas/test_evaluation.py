"""`evaluate` in the contract: its cost in admission, its strict flag, the catalogue's caveats."""

import pytest
from pydantic import ValidationError

from schemas.evaluation import EVALUATION_PASSES, EVALUATION_STEPS
from schemas.explain import ExplainParameters
from schemas.kserve import KServeExplainRequest
from schemas.methods import PARAMS_BY_METHOD, Workload, job_passes, method_catalogue


def test_evaluation_passes_are_every_point_of_both_curves() -> None:
    assert EVALUATION_PASSES == 2 * (EVALUATION_STEPS + 1)


def test_evaluate_adds_its_passes_per_map_to_the_job_cost() -> None:
    params = {m: PARAMS_BY_METHOD[m]() for m in ("gradcam", "saliency")}
    work = Workload(height=128, width=256, targets=3)
    scale = 128 * 256 / (256 * 256)
    extra = job_passes(params, work, evaluate=True) - job_passes(params, work)
    assert extra == pytest.approx(scale * EVALUATION_PASSES * 3 * 2)


def test_evaluate_is_a_strict_boolean_shared_with_kserve() -> None:
    assert ExplainParameters().evaluate is False
    assert ExplainParameters.model_validate({"evaluate": True}).evaluate is True
    with pytest.raises(ValidationError):
        ExplainParameters.model_validate({"evaluate": "true"})
    request = KServeExplainRequest.model_validate(
        {"instances": [{"image": "aGk="}], "parameters": {"evaluate": True}}
    )
    assert request.options("demo-lesions", request.instances[0]).evaluate is True


def test_the_catalogue_publishes_each_methods_own_caveats() -> None:
    specs = {spec.id: spec for spec in method_catalogue()}
    for method, spec in specs.items():
        assert spec.caveats == list(PARAMS_BY_METHOD[method].caveats)
        assert spec.evaluation_passes == EVALUATION_PASSES
    assert specs["guided_backprop"].caveats and specs["guided_gradcam"].caveats
