"""Mixed precision (opt-in) and the memory budget of multi-sample methods, on the CPU: autocast
really runs the passes in bfloat16 while the maps stay float32, and a budget changes how a method
chunks its passes, never its map."""

from collections.abc import Iterator

import pytest
import torch
from method_checks import EPS32, float32_rounding, max_relative_deviation
from method_models import small_cnn

from workers.methods import explain
from workers.methods.base import (
    ACTIVATION_BYTES_PER_INPUT_BYTE,
    PASS_INPUT_ELEMENTS,
    copies_per_pass,
    set_pass_memory,
)
from workers.precision import computing

EPS_BF16 = torch.finfo(torch.bfloat16).eps
GRADIENT_METHODS = ["saliency", "gradcam", "guided_backprop", "guided_gradcam"]
# Guided backprop gates each ReLU's gradient by its sign, a branch that bfloat16's roundings flip
# near zero: its maps have no rounding bound (docs/benchmarks.md gives the deviation measured).
UNGATED = {"saliency", "gradcam"}


@pytest.fixture()
def budget() -> Iterator[None]:
    yield
    set_pass_memory(0)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_bfloat16_autocast_runs_the_passes_reduced_and_keeps_the_map_float32(method: str) -> None:
    model = small_cnn().float()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2])
    full = explain(method, model, inputs, targets, {}, cam_layer="6").values

    with computing(torch.device("cpu"), "bfloat16"):
        reduced = explain(method, model, inputs, targets, {}, cam_layer="6").values

    assert reduced.dtype == torch.float32
    deviation = max_relative_deviation(reduced, full)
    # Not float32's result: the convolutions ran in bfloat16 (their roundings exceed float32's).
    assert deviation > float32_rounding(full, 8)
    if method in UNGATED:
        # Two convolutions, two BatchNorms and the head, each rounding its output to bfloat16,
        # and the same again backward: a few dozen roundings of eps_bf16/2 relative to values.
        assert deviation <= float32_rounding(full, 32) * EPS_BF16 / EPS32


def test_float32_precision_is_the_model_as_loaded() -> None:
    model = small_cnn().float()
    inputs = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1])
    expected = explain("saliency", model, inputs, targets, {}, cam_layer="6").values

    with computing(torch.device("cpu"), "float32"):
        values = explain("saliency", model, inputs, targets, {}, cam_layer="6").values

    assert torch.equal(values, expected)


@pytest.mark.usefixtures("budget")
def test_a_memory_budget_sizes_the_chunks_of_a_pass() -> None:
    inputs = torch.zeros(2, 3, 32, 32)
    assert copies_per_pass(inputs) == PASS_INPUT_ELEMENTS // inputs.numel()
    one_copy = inputs.numel() * 4 * ACTIVATION_BYTES_PER_INPUT_BYTE

    set_pass_memory(5 * one_copy + 1)
    assert copies_per_pass(inputs) == 5
    set_pass_memory(one_copy // 2)
    assert copies_per_pass(inputs) == 1  # never none


@pytest.mark.parametrize("method", ["smoothgrad", "integrated_gradients"])
@pytest.mark.usefixtures("budget")
def test_a_small_budget_changes_the_chunks_not_the_map(method: str) -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    targets = torch.tensor([0, 4])
    params = {"samples": 6} if method == "smoothgrad" else {"steps": 6, "max_steps": 6}
    default = explain(method, model, inputs, targets, params, cam_layer="6").values

    set_pass_memory(inputs.numel() * 8 * ACTIVATION_BYTES_PER_INPUT_BYTE)  # one copy per pass
    chunked = explain(method, model, inputs, targets, params, cam_layer="6").values

    # The same float64 sums in another grouping, each map rounded to float32 once.
    assert (chunked - default).abs().amax() <= 2 * EPS32 * default.abs().amax()
