"""The method registry: dispatch, parameter resolution for provenance, and request errors."""

import pytest
import torch
from torch import nn

from schemas.methods import PARAMS_BY_METHOD
from schemas.methods.saliency import SaliencyParams
from workers.methods import (
    METHODS,
    AttributionMap,
    Batch,
    MethodParameterError,
    Normalisation,
    TargetError,
    UnknownMethodError,
    available_methods,
    explain,
    resolve_params,
)


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        .eval()
        .requires_grad_(False)
    )


def test_registers_the_first_methods() -> None:
    assert {"gradcam", "saliency"} <= set(METHODS)
    assert all(method.id == key for key, method in METHODS.items())


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_explain_gives_one_map_per_sample_at_input_size(method: str) -> None:
    inputs = torch.randn(2, 1, 10, 12)

    result = explain(method, tiny_cnn(), inputs, torch.tensor([2, 0]), {}, cam_layer="1")

    assert result.values.shape == (2, 10, 12)
    assert result.values.dtype == torch.float32
    assert not result.values.requires_grad


def test_unknown_method() -> None:
    with pytest.raises(UnknownMethodError, match="nope"):
        explain("nope", tiny_cnn(), torch.randn(1, 1, 4, 4), torch.tensor([0]), {}, cam_layer="1")
    assert issubclass(UnknownMethodError, ValueError)


def test_resolve_params_fills_defaults() -> None:
    assert resolve_params("saliency", {}, cam_layer="1") == {"abs": True}
    assert resolve_params("saliency", {"abs": False}, cam_layer="1") == {"abs": False}
    assert resolve_params("gradcam", {}, cam_layer="features.4") == {"layer": "features.4"}
    assert resolve_params("gradcam", {"layer": "features.2"}, cam_layer="features.4") == {
        "layer": "features.2"
    }


def test_an_unset_layer_is_the_models_cam_layer() -> None:
    assert resolve_params("gradcam", {"layer": None}, cam_layer="features.4") == {
        "layer": "features.4"
    }


@pytest.mark.parametrize(
    ("method", "parameter"),
    [("lrp", "epsilon"), ("lrp", "alpha"), ("smoothgrad", "seed"), ("rise", "masks")],
)
def test_none_for_a_number_is_refused_not_replaced_by_the_default(
    method: str, parameter: str
) -> None:
    # JSON writers spell a non-finite number null; the default is not what was asked for.
    with pytest.raises(MethodParameterError, match=parameter) as caught:
        resolve_params(method, {parameter: None}, cam_layer="1")
    assert caught.value.parameter == parameter


@pytest.mark.parametrize(
    ("method", "params", "parameter"),
    [
        ("saliency", {"abs": "yes"}, "abs"),
        ("saliency", {"abs": 1}, "abs"),
        ("saliency", {"samples": 3}, "samples"),
        ("gradcam", {"layer": 4}, "layer"),
    ],
)
def test_bad_parameters_are_named(method: str, params: dict[str, object], parameter: str) -> None:
    with pytest.raises(MethodParameterError, match=parameter) as caught:
        resolve_params(method, params, cam_layer="1")
    assert caught.value.parameter == parameter
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "targets",
    [
        torch.tensor([0]),
        torch.tensor([0, 3]),
        torch.tensor([-1, 0]),
        torch.tensor([0.0, 1.0]),
        torch.tensor([[0], [1]]),
    ],
)
def test_bad_targets(targets: torch.Tensor) -> None:
    with pytest.raises(TargetError):
        explain("saliency", tiny_cnn(), torch.randn(2, 1, 4, 4), targets, {}, cam_layer="1")


def test_inputs_must_be_a_batch_of_images() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        explain("saliency", tiny_cnn(), torch.randn(1, 4, 4), torch.tensor([0]), {}, cam_layer="1")


def test_gradient_methods_are_available_for_any_model() -> None:
    assert {"gradcam", "saliency"} <= set(available_methods(tiny_cnn()))


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("integrated_gradients", {"steps": 8, "max_steps": 8}),
        ("deeplift", {}),
        ("occlusion", {"window": 4, "stride": 4, "fill": "black"}),
        ("rise", {"masks": 32}),
        ("lrp", {"first_layer": "zbox"}),
        # Noiseless, so that the copy keeps its black and white pixels.
        ("smoothgrad", {"samples": 1, "noise": 0.0, "base": "deeplift", "abs": False}),
    ],
)
def test_the_models_normalisation_sets_black_and_the_z_box_bounds(
    method: str, params: dict[str, object]
) -> None:
    """With the normalisation, black is pixel 0 and the z-box spans pixels 0 to 1; without it,
    each image's darkest and brightest values stand in, which is the same on an image holding
    black and white pixels in every channel and not on one without."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        .eval()
        .requires_grad_(False)
    )
    normalisation = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean = torch.tensor(normalisation.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std).view(1, 3, 1, 1)
    grey = 0.2 + 0.6 * torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    full_range = grey.clone()
    full_range[..., 0, 0], full_range[..., 0, 1] = 0.0, 1.0
    targets = torch.tensor([1])

    def maps(pixels: torch.Tensor, given: Normalisation | None) -> torch.Tensor:
        inputs = (pixels - mean) / std
        return explain(
            method, model, inputs, targets, params, cam_layer="", normalisation=given
        ).values

    exact, estimated = maps(full_range, normalisation), maps(full_range, None)
    # The black and white pixels normalise by the same float32 operations as the normalisation's
    # own pixels 0 and 1, and rounding keeps their order, so the darkest and brightest values
    # are those very numbers: the same baseline and bounds, the same arithmetic, the same map.
    torch.testing.assert_close(estimated, exact, rtol=0.0, atol=0.0)
    exact, estimated = maps(grey, normalisation), maps(grey, None)
    # Without black and white pixels the estimate is off by a fifth of the pixel range: it moves
    # the maps by 0.5 % (RISE, the least) to 50 % of their largest value, far beyond rounding.
    assert not torch.allclose(exact, estimated, atol=1e-3 * float(exact.abs().max()))


def test_the_worker_implements_exactly_the_catalogued_methods_with_their_parameters() -> None:
    assert sorted(METHODS) == sorted(PARAMS_BY_METHOD)
    for method_id, method in METHODS.items():
        assert method.id == method_id
        assert method.params_model is PARAMS_BY_METHOD[method_id]


def test_a_method_reaches_its_implementation_with_its_typed_parameters() -> None:
    seen: list[object] = []
    saliency = METHODS["saliency"]
    original = type(saliency).attribute

    def spy(_self: object, batch: Batch, params: SaliencyParams) -> AttributionMap:
        seen.append(params)
        return original(saliency, batch, params)

    type(saliency).attribute = spy  # type: ignore[method-assign]
    try:
        explain(
            "saliency",
            tiny_cnn(),
            torch.randn(1, 1, 4, 4),
            torch.tensor([0]),
            {"abs": False},
            cam_layer="1",
        )
    finally:
        type(saliency).attribute = original  # type: ignore[method-assign]
    assert seen == [SaliencyParams(abs=False)]
