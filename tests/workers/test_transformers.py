"""Vision transformers: token CAM layers read on the patch grid, the default CAM layer, the CAM
variants against pytorch-grad-cam 1.5.7 with its `reshape_transform`, and the methods refused
with a reason on models without ReLUs."""

from collections.abc import Callable

import pytest
import torch
from grad_cam_reference import (
    REFERENCES,
    LayerMap,
    pytorch_grad_cam_layer_map,
    rectified_upsampled,
)
from method_checks import assert_untouched, float32_rounding, max_relative_deviation
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.base_cam import BaseCAM
from torch import nn
from transformer_models import VIT_SIZE, build_tiny_deit, random_swin_t, random_vit_b_16

from workers.methods import explain, unsupported_methods
from workers.methods.base import UnsupportedModelError
from workers.methods.cam_layers import default_cam_layer, find_cam_layers

# Apply to no model without a ReLU: guided ones have nothing to guide, the rule-based ones have
# no rule for GELU, softmax attention or LayerNorm.
REFUSED_WITHOUT_RELU = {"deeplift", "guided_backprop", "guided_gradcam", "lrp"}
DEIT_SIZE = (16, 24)  # not square: the 4 × 6 patch grid cannot be guessed by a square root


@pytest.fixture(scope="module")
def deit() -> nn.Module:
    return build_tiny_deit().double().requires_grad_(False)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return random_vit_b_16().requires_grad_(False)


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    return random_swin_t().requires_grad_(False)


def tokens_as_grid(extra: int, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's `reshape_transform` for (N, extra + h·w, D) tokens, as its ViT
    tutorial writes it (with `extra` leading tokens dropped instead of one)."""

    def transform(tensor: torch.Tensor) -> torch.Tensor:
        grid = tensor[:, extra:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return grid.transpose(2, 3).transpose(1, 2)

    return transform


def channels_last_as_grid(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's `reshape_transform` for Swin's (N, h, w, D) token grid."""
    return tensor.permute(0, 3, 1, 2)


def test_token_layers_are_read_on_the_patch_grid_of_a_non_square_input(deit: nn.Module) -> None:
    layers = find_cam_layers(deit, torch.zeros(1, 3, *DEIT_SIZE, dtype=torch.float64))

    patch_embed, norm1 = layers["patch_embed"], layers["blocks.1.norm1"]
    assert (patch_embed.kind, patch_embed.grid, patch_embed.channels) == ("conv", (4, 6), 16)
    # The class and the distillation token come first and are dropped.
    assert (norm1.kind, norm1.grid, norm1.extra_tokens, norm1.channels) == ("tokens", (4, 6), 2, 16)
    tokens = torch.arange(2 * 26 * 16, dtype=torch.float64).reshape(2, 26, 16)
    grid = norm1.as_grid(tokens)
    assert grid.shape == (2, 16, 4, 6)
    # Position (row 1, column 2) is the patch token 1·6 + 2 after the two extra tokens.
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 2 + 1 * 6 + 2])


def test_the_default_layer_is_the_deepest_whose_grid_the_logits_reach(deit: nn.Module) -> None:
    example = torch.zeros(1, 3, *DEIT_SIZE, dtype=torch.float64)
    layers = find_cam_layers(deit, example)

    assert default_cam_layer(deit, example, layers) == "blocks.1.norm1"
    # Deeper token layers exist, but the heads read only the class and distillation tokens of
    # the last block's output: Grad-CAM there is zero everywhere.
    assert list(layers).index("blocks.1") > list(layers).index("blocks.1.norm1")
    inputs = torch.randn(2, 3, *DEIT_SIZE, generator=torch.Generator().manual_seed(3)).double()
    targets = torch.tensor([0, 2])
    last_block = explain("gradcam", deit, inputs, targets, {}, cam_layer="blocks.1").values
    chosen = explain("gradcam", deit, inputs, targets, {}, cam_layer="blocks.1.norm1").values
    assert bool((last_block == 0).all())
    assert bool((chosen.flatten(1).amax(1) > 0).all())


def test_vit_b_16_token_layers_and_default(vit: nn.Module) -> None:
    example = torch.zeros(1, 3, VIT_SIZE, VIT_SIZE)
    layers = find_cam_layers(vit, example)

    assert layers["conv_proj"].kind == "conv"
    last = layers["encoder.layers.encoder_layer_11"]
    assert (last.kind, last.grid, last.extra_tokens, last.channels) == ("tokens", (4, 4), 1, 768)
    assert default_cam_layer(vit, example, layers) == "encoder.layers.encoder_layer_11.ln_1"


def test_swin_token_grids_are_channels_last(swin: nn.Module) -> None:
    layers = find_cam_layers(swin, torch.zeros(1, 3, VIT_SIZE, VIT_SIZE))

    assert (layers["features.0"].kind, layers["features.0"].grid) == ("tokens", (16, 16))
    assert (layers["features.7"].kind, layers["features.7"].grid) == ("tokens", (2, 2))
    assert (layers["norm"].kind, layers["norm"].channels) == ("tokens", 768)
    # Inside a block, elementwise steps on the grid stay token grids (not (N, 2, 2, 768) convs).
    assert all(
        layer.kind == "tokens" for name, layer in layers.items() if name.startswith("features.7")
    )
    assert (layers["permute"].kind, layers["permute"].grid) == ("conv", (2, 2))


PYTORCH_GRAD_CAM_EPSILON = 1e-7


def epsilon_shift(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """A bound, per sample, on how far XGradCAM's 1e-7 added to each channel's sum S_k moves its
    layer map: its weight P_k / (S_k + ε) is P_k / S_k less P_k ε / (S_k (S_k + ε)), at most
    |P_k| ε / (|S_k| (|S_k| − ε)) in size, times |A_k| summed over channels. LayerNorm's
    activations take both signs, so |S_k| must stay well above ε."""
    sums = activations.sum(dim=(2, 3)).abs()
    assert bool((sums > 1e3 * PYTORCH_GRAD_CAM_EPSILON).all()), "a channel sums to about 0"
    products = (gradients * activations).sum(dim=(2, 3)).abs()
    shifts = products * PYTORCH_GRAD_CAM_EPSILON / (sums * (sums - PYTORCH_GRAD_CAM_EPSILON))
    return (shifts[:, :, None, None] * activations.abs()).sum(dim=1).flatten(1).amax(1)


def compare(  # noqa: PLR0913 - one comparison, spelled out
    cam_class: type[BaseCAM],
    method: str,
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, LayerMap]:
    """The method's maps, pytorch-grad-cam's rectified and upsampled, and its layer map."""
    targets = torch.tensor([0, 2, 1])
    result = explain(method, model, inputs, targets, {}, cam_layer=layer)
    reference = pytorch_grad_cam_layer_map(cam_class, model, layer, inputs, targets, transform)
    assert result.values.shape == (3, *inputs.shape[2:])
    expected = rectified_upsampled(reference.values, (inputs.shape[2], inputs.shape[3]))
    return result.values, expected, reference


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam", "layercam"])
def test_cam_variants_on_deit_tokens_match_pytorch_grad_cam(method: str, deit: nn.Module) -> None:
    inputs = torch.randn(3, 3, *DEIT_SIZE, generator=torch.Generator().manual_seed(1)).double()
    cam_class = GradCAM if method == "gradcam" else REFERENCES[method]

    result, expected, reference = compare(
        cam_class, method, deit, "blocks.1.norm1", inputs, tokens_as_grid(2, 4, 6)
    )

    # Both in float64: the map's rounding to float32, ≤ eps32/2 of each value, and ~1e-16 more;
    # for XGrad-CAM, the shift of pytorch-grad-cam's 1e-7 added to each channel's sum as well.
    bound = float32_rounding(expected, 1)
    if method == "xgradcam":
        assert reference.gradients is not None
        spans = expected.flatten(1).amax(1) - expected.flatten(1).amin(1)
        shift = epsilon_shift(reference.activations, reference.gradients) / spans
        assert float(shift.max()) < 1e-5, "the epsilon, not the method, would be measured"
        bound += float(shift.max())
    assert max_relative_deviation(result, expected) <= bound
    assert_untouched(deit)


def test_gradcam_on_vit_b_16_tokens_matches_pytorch_grad_cam(vit: nn.Module) -> None:
    model = vit.double()
    try:
        inputs = torch.randn(3, 3, VIT_SIZE, VIT_SIZE, generator=torch.Generator().manual_seed(2))
        layer = "encoder.layers.encoder_layer_11.ln_1"
        result, expected, _ = compare(
            GradCAM, "gradcam", model, layer, inputs.double(), tokens_as_grid(1, 4, 4)
        )
    finally:
        model.float()

    assert max_relative_deviation(result, expected) <= float32_rounding(expected, 1)


def test_gradcam_on_swin_token_grid_matches_pytorch_grad_cam(swin: nn.Module) -> None:
    model = swin.double()
    try:
        inputs = torch.randn(3, 3, VIT_SIZE, VIT_SIZE, generator=torch.Generator().manual_seed(4))
        result, expected, _ = compare(
            GradCAM, "gradcam", model, "features.5", inputs.double(), channels_last_as_grid
        )
    finally:
        model.float()

    assert max_relative_deviation(result, expected) <= float32_rounding(expected, 1)


@pytest.mark.parametrize("model_name", ["deit", "vit", "swin"])
def test_methods_without_a_rule_for_the_model_are_refused_with_the_reason(
    model_name: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(model_name)

    refused = unsupported_methods(model)

    # Swin's head is a global average pool + linear layer; ViT's and DeiT's read tokens.
    expected = REFUSED_WITHOUT_RELU | ({"cam"} if model_name != "swin" else set())
    assert set(refused) == expected
    assert "no ReLU activation" in refused["guided_backprop"]
    assert "GELU" in refused["deeplift"] and "LayerNorm" in refused["lrp"]
    inputs = torch.zeros(1, 3, *(DEIT_SIZE if model_name == "deit" else (VIT_SIZE, VIT_SIZE)))
    with pytest.raises(UnsupportedModelError, match="no ReLU activation"):
        explain(
            "guided_backprop",
            model,
            inputs.to(next(model.parameters()).dtype),
            torch.tensor([0]),
            {},
            cam_layer="",
        )


@pytest.mark.parametrize("method", ["gradcam_pp", "scorecam", "eigencam", "layercam"])
def test_every_cam_method_gives_a_map_at_the_input_size_on_tokens(
    method: str, deit: nn.Module
) -> None:
    inputs = torch.randn(2, 3, *DEIT_SIZE, generator=torch.Generator().manual_seed(5)).double()

    result = explain(method, deit, inputs, torch.tensor([1, 2]), {}, cam_layer="blocks.1.norm1")

    assert result.values.shape == (2, *DEIT_SIZE)
    assert bool(torch.isfinite(result.values).all())
    assert bool((result.values.flatten(1).amax(1) > 0).all())
