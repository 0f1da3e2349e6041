"""Occlusion against Captum's Occlusion, a linear model worked by hand, and ONNX Runtime."""

import json
import shutil

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from method_checks import (
    DEVICES,
    EPS32,
    assert_untouched,
    max_relative_deviation,
)
from method_models import DEMO_MODEL, small_cnn
from rounding_bounds_cam import RecordingForward, float32_drop_bound
from torch import nn
from typing_extensions import override

from schemas.methods.occlusion import OcclusionParams
from workers.methods import MethodParameterError, TargetError, explain
from workers.methods.baselines import make_baseline
from workers.repository import LoadedModel, load_model

DEMO = DEMO_MODEL


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return load_model(DEMO, torch.device("cpu"))


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The demo model served from its ONNX file, so `forward_logits` runs ONNX Runtime."""
    version = tmp_path_factory.mktemp("repository") / "demo-lesions" / "1"
    version.mkdir(parents=True)
    manifest = json.loads((DEMO / "manifest.json").read_text())
    manifest.update(format="onnx", cam_layer=None)
    del manifest["architecture"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(DEMO / "model.onnx", version / "model.onnx")
    model = load_model(version, torch.device("cpu"))
    assert model.onnx_session is not None
    return model


def captum_occlusion(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: OcclusionParams
) -> torch.Tensor:
    """Captum's Occlusion over the whole-channel windows of `params`, with its fill as the
    baselines."""
    fill, window, stride = params.fill, params.window, params.stride
    if fill == "black":
        # The method's black: each channel's darkest pixel in the image.
        baselines = inputs.amin(dim=(2, 3), keepdim=True).expand_as(inputs)
    else:
        baselines = make_baseline(fill, inputs)
    channels = inputs.shape[1]
    attribution = CaptumOcclusion(model).attribute(
        inputs,
        sliding_window_shapes=(channels, window, window),
        strides=(channels, stride, stride),
        baselines=baselines,
        target=targets.tolist(),
        perturbations_per_eval=32,
    )
    # The window spans every channel, so each channel holds the same per-pixel value.
    return attribution[:, 0]


@pytest.mark.parametrize(
    ("fill", "window", "stride"),
    [("black", 5, 3), ("mean", 4, 4), ("blur", 5, 2), ("black", 6, 1)],
)
def test_matches_captum_on_a_small_cnn(fill: str, window: int, stride: int) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([0, 3, 4])
    params = {"fill": fill, "window": window, "stride": stride, "batch_size": 30}
    forward = RecordingForward(model)

    result = explain("occlusion", model, inputs, targets, params, cam_layer="4", forward=forward)

    expected = captum_occlusion(model, inputs, targets, OcclusionParams.model_validate(params))
    assert result.values.shape == (3, 16, 16)
    assert result.values.dtype == torch.float32
    assert result.signed
    bound = float32_drop_bound(expected, forward.largest_logit, window, stride, batch_size=30)
    assert max_relative_deviation(result.values, expected) <= bound
    assert_untouched(model)


def test_matches_captum_on_the_demo_model() -> None:
    # In float64, like `small_cnn`'s: a fresh copy, as `demo` serves the float32 model to others.
    demo = load_model(DEMO, torch.device("cpu"))
    demo.module.double()
    inputs = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([1, 2])
    # Windows of 40 every 30 pixels do not tile 128: the last one is cut off at the edge.
    fill, window, stride = "black", 40, 30
    params = {"fill": fill, "window": window, "stride": stride}
    forward = RecordingForward(demo.forward_logits)

    result = explain(
        "occlusion",
        demo.module,
        inputs,
        targets,
        params,
        cam_layer=demo.default_cam_layer,
        forward=forward,
    )

    expected = captum_occlusion(
        demo.module, inputs, targets, OcclusionParams.model_validate(params)
    )
    bound = float32_drop_bound(expected, forward.largest_logit, window, stride)
    assert max_relative_deviation(result.values, expected) <= bound
    assert_untouched(demo.module)


def test_onnx_runtime_gives_the_pytorch_map(demo: LoadedModel, demo_onnx: LoadedModel) -> None:
    inputs = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([2, 0])
    params = {"window": 48, "stride": 40, "fill": "mean"}
    # ONNX Runtime runs float32 only, so both stay in float32. Each pass through ONNX Runtime is
    # also run through PyTorch, to know how far apart the two runtimes' logits are (δ).
    onnx_forward = RecordingForward(demo_onnx.forward_logits, twin=demo.forward_logits)

    on_onnx = explain(
        "occlusion",
        demo_onnx.module,
        inputs,
        targets,
        params,
        cam_layer=demo_onnx.default_cam_layer,
        forward=onnx_forward,
    )
    on_torch = explain("occlusion", demo.module, inputs, targets, params, cam_layer="unused")

    # One unoccluded and 3 x 3 occluded copies per image, all through ONNX Runtime.
    assert sum(onnx_forward.rows) == 2 * (1 + 9)
    # Logits δ apart move each drop, and so each mean of drops, by ≤ 2δ; each side's float32
    # arithmetic after the logits adds its `float32_drop_bound`.
    spans = on_torch.values.flatten(1).amax(1) - on_torch.values.flatten(1).amin(1)
    gap = float((2 * onnx_forward.twin_gap / spans).max())
    arithmetic = float32_drop_bound(on_torch.values, onnx_forward.largest_logit, 48, 40)
    assert max_relative_deviation(on_onnx.values, on_torch.values) <= gap + 2 * arithmetic


def test_a_linear_model_gives_its_weighted_input_differences() -> None:
    torch.manual_seed(4)
    linear = nn.Linear(2 * 6 * 6, 1, bias=False)
    weight = linear.weight.detach().clone()
    # In float64, where the logits and the contributions are exact to ~1e-16.
    model = nn.Sequential(nn.Flatten(), linear).double().eval().requires_grad_(False)
    inputs = torch.randn(1, 2, 6, 6).double()
    darkest = inputs.amin(dim=(2, 3), keepdim=True)
    forward = RecordingForward(model)

    single_pixels = explain(
        "occlusion",
        model,
        inputs,
        torch.tensor([0]),
        {"window": 1, "stride": 1},
        cam_layer="0",
        forward=forward,
    )
    whole_image = explain(
        "occlusion",
        model,
        inputs,
        torch.tensor([0]),
        {"window": 100, "stride": 7},
        cam_layer="0",
        forward=forward,
    )

    contributions = (weight.double().view(1, 2, 6, 6) * (inputs - darkest)).sum(dim=1)
    bound = float32_drop_bound(contributions, forward.largest_logit, window=1, stride=1)
    assert max_relative_deviation(single_pixels.values, contributions) <= bound
    # A window larger than the image covers all of it: every pixel gets the whole drop, within
    # the rounding of the two logits and of their difference, 2·eps32·L.
    whole = contributions.sum().expand(1, 6, 6)
    torch.testing.assert_close(
        whole_image.values.double(), whole, rtol=0.0, atol=2 * EPS32 * forward.largest_logit
    )


def test_a_batch_equals_single_image_calls_and_repeated_images_share_passes() -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    # The same image twice with different targets, then another image.
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 2, 1])
    params = {"window": 6, "stride": 4, "batch_size": 5}
    counting_forward = RecordingForward(model)
    rows = counting_forward.rows

    batch = explain(
        "occlusion", model, inputs, targets, params, cam_layer="4", forward=counting_forward
    )
    singles = torch.cat(
        [
            explain(
                "occlusion", model, inputs[i : i + 1], targets[i : i + 1], params, cam_layer="4"
            ).values
            for i in range(3)
        ]
    )

    # Both sides' float32 arithmetic on logits ~1e-16 apart (see `float32_drop_bound`).
    bound = float32_drop_bound(singles, counting_forward.largest_logit, 6, 4, batch_size=5)
    assert max_relative_deviation(batch.values, singles) <= 2 * bound
    assert not torch.allclose(batch.values[0], batch.values[1])
    # 4 x 4 windows per distinct image plus its unoccluded pass: two images, not three rows.
    assert sum(rows) == 2 * (16 + 1)
    assert max(rows) <= 5


def test_explain_hands_forward_only_to_forward_only_methods() -> None:
    model = small_cnn()
    inputs = torch.randn(1, 3, 8, 8).double()
    targets = torch.tensor([1])

    class Unusable(nn.Module):
        @override
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the module must not run when `forward` is given")

    via_forward = explain(
        "occlusion",
        Unusable(),
        inputs,
        targets,
        {"window": 4, "stride": 2},
        cam_layer="4",
        forward=model,
    )
    via_module = explain(
        "occlusion", model, inputs, targets, {"window": 4, "stride": 2}, cam_layer="4"
    )
    # The same passes and the same float32 arithmetic on the same logits: the same map.
    torch.testing.assert_close(via_forward.values, via_module.values, rtol=0.0, atol=0.0)

    def refuse(_batch: torch.Tensor) -> torch.Tensor:
        raise AssertionError("gradient methods must not call `forward`")

    explain("saliency", model, inputs, targets, {}, cam_layer="4", forward=refuse)


def test_rejects_a_stride_that_skips_pixels() -> None:
    with pytest.raises(MethodParameterError, match="stride") as caught:
        explain(
            "occlusion",
            small_cnn(),
            torch.randn(1, 3, 16, 16).double(),
            torch.tensor([0]),
            {"window": 4, "stride": 5},
            cam_layer="4",
        )
    assert caught.value.parameter == "stride"


def test_rejects_a_target_the_model_does_not_have() -> None:
    with pytest.raises(TargetError):
        explain(
            "occlusion",
            small_cnn(),
            torch.randn(2, 3, 8, 8).double(),
            torch.tensor([0, 5]),
            {},
            cam_layer="4",
        )


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6)).double()
    targets = torch.tensor([4, 0, 2])
    params = {"window": 6, "stride": 3, "fill": "blur"}

    forward = RecordingForward(model)
    on_cpu = explain("occlusion", model, inputs, targets, params, cam_layer="4", forward=forward)
    on_device = explain(
        "occlusion", model.to(device), inputs.to(device), targets.to(device), params, cam_layer="4"
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either): both sides' float32 arithmetic on logits ~1e-15 apart.
    bound = float32_drop_bound(on_cpu.values, forward.largest_logit, 6, 3)
    assert max_relative_deviation(on_device.values.cpu(), on_cpu.values) <= 2 * bound
