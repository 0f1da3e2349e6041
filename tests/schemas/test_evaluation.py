"""`evaluate` in the contract: its cost in admission, its strict flag, the catalogue's caveats
(each randomisation figure as `docs/quality.md` measured it)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.evaluation import EVALUATION_PASSES, EVALUATION_STEPS
from schemas.explain import ExplainParameters
from schemas.kserve import KServeExplainRequest
from schemas.methods import PARAMS_BY_METHOD, Workload, job_passes, method_catalogue
from schemas.methods.contract import RANDOMISATION_PASS

QUALITY = Path(__file__).resolve().parents[2] / "docs" / "quality.md"


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


def measured_at_the_head() -> dict[str, float]:
    """Each method's rank correlation once the head is re-drawn, on the safetensors model, as
    `docs/quality.md`'s table of the benchmark gives it."""
    lines = QUALITY.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | format |"))
    header = [cell.strip() for cell in lines[start].strip().strip("|").split("|")]
    column = header.index("ρ classifier")
    measured = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[1] == "safetensors":
            measured[cells[0]] = float(cells[column])
    return measured


def test_every_method_that_fails_the_randomisation_check_says_so_with_the_measured_figure() -> None:
    measured = measured_at_the_head()
    assert set(measured) == set(PARAMS_BY_METHOD)
    for method, rho in measured.items():
        failed = [c for c in PARAMS_BY_METHOD[method].caveats if "randomisation check" in c]
        if rho >= RANDOMISATION_PASS:
            assert any(f"{rho:.2f}" in caveat for caveat in failed), (method, rho, failed)
        else:
            assert not any(caveat.startswith("Fails") for caveat in failed), (method, rho)
