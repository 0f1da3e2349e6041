"""Score-CAM against a direct loop over the channels written from the paper, its pass count, and
its refusals."""

import pytest
import torch
import torch.nn.functional as F
from method_checks import DEVICES, assert_untouched, max_relative_deviation
from rounding_bounds_cam import float32_softmax_bound
from torch import nn

from workers.methods import MethodParameterError, TargetError, explain


def small_cnn(classes: int = 5) -> nn.Sequential:
    """Conv–BN–ReLU, max-pool, Conv–ReLU, global average pool, linear; without biases, so that
    the all-zero baseline input gets uniform probabilities and masks that keep an image's
    features raise its top classes above them; in float64.

    In float64 so that the method and the loop agree to far below float32's precision, and no
    ReLU or max-pool near its kink or tie is decided differently by their roundings: what
    separates them is the method's float32 softmax and the map's rounding to float32.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes, bias=False),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var = torch.empty(module.num_features).uniform_(0.5, 2.0)
    return model.double().eval().requires_grad_(False)


def top_classes(model: nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    with torch.no_grad():
        return model(images).topk(k, dim=1).indices


def loop_scorecam(
    model: nn.Sequential, split: int, image: torch.Tensor, target: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Algorithm 1 of Wang et al. for one image, one channel at a time, in the model's dtype;
    also Σ_k (p_k + p_0)·|A_k| upsampled like the map, and the largest |logit| met, which bound
    what the method's float32 probabilities change (`float32_softmax_bound`)."""
    size = image.shape[2:]
    with torch.no_grad():
        activation = model[:split](image)[0]
        zero_logits = model(torch.zeros_like(image))
        baseline = torch.softmax(zero_logits, dim=1)[0, target]
        largest_logit = float(zero_logits.abs().max())
        cam = torch.zeros(activation.shape[1:], dtype=activation.dtype)
        magnitude = torch.zeros_like(cam)
        for channel_map in activation:
            upsampled = F.interpolate(channel_map[None, None], size=size, mode="bilinear")
            if upsampled.max() == upsampled.min():
                continue
            mask = (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min())
            logits = model(image * mask)
            largest_logit = max(largest_logit, float(logits.abs().max()))
            score = torch.softmax(logits, dim=1)[0, target]
            cam += (score - baseline) * channel_map
            magnitude += (score + baseline) * channel_map.abs()
    return (
        F.interpolate(torch.relu(cam)[None, None], size=size, mode="bilinear")[0],
        F.interpolate(magnitude[None, None], size=size, mode="bilinear")[0],
        largest_logit,
    )


def loop_scorecams(
    model: nn.Sequential, split: int, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """`loop_scorecam` for each row, and the `float32_softmax_bound` of the method's maps."""
    rows = [
        loop_scorecam(model, split, inputs[i : i + 1], int(target))
        for i, target in enumerate(targets)
    ]
    expected = torch.cat([row[0] for row in rows])
    magnitude = torch.cat([row[1] for row in rows])
    classes = int(model[-1].out_features)
    bound = float32_softmax_bound(expected, magnitude, max(row[2] for row in rows), classes)
    return expected, bound


@pytest.mark.parametrize(("layer", "batch_size"), [(5, 32), (5, 3), (2, 1)])
def test_matches_a_direct_loop_over_the_channels(layer: int, batch_size: int) -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()
    # An image repeated with another target, then a second image.
    inputs = torch.stack([images[0], images[0], images[1]])
    top = top_classes(model, images, 2)
    targets = torch.stack([top[0, 0], top[0, 1], top[1, 0]])

    result = explain(
        "scorecam", model, inputs, targets, {"batch_size": batch_size}, cam_layer=str(layer)
    )

    expected, bound = loop_scorecams(model, layer + 1, inputs, targets)
    assert result.values.shape == (3, 16, 16)
    assert result.values.dtype == torch.float32
    assert not result.signed
    assert max_relative_deviation(result.values, expected) <= bound
    assert not torch.allclose(result.values[0], result.values[1])
    assert_untouched(model)


class CountingRows(nn.Module):
    """Wraps a model and records the batch size of each forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.passes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes.append(x.shape[0])
        return self.model(x)


def test_masked_passes_are_chunked_and_shared_by_an_images_targets() -> None:
    # A constant channel (all-zero weights, so all-zero maps) carries no location: no pass.
    model = small_cnn()
    conv = model[4]
    assert isinstance(conv, nn.Conv2d)
    conv.weight[7] = 0
    counting = CountingRows(model)
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)).double()
    targets = top_classes(model, image, 3)[0]

    result = explain(
        "scorecam",
        counting,
        image.expand(3, -1, -1, -1),
        targets,
        {"batch_size": 3},
        cam_layer="model.5",
    )

    # The activations, the all-zero baseline, then 7 masked images in passes of at most 3.
    assert counting.passes == [1, 1, 3, 3, 1]
    expected, bound = loop_scorecams(model, 6, image.expand(3, -1, -1, -1), targets)
    assert max_relative_deviation(result.values, expected) <= bound


def test_the_layer_parameter_overrides_the_cam_layer() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    targets = top_classes(model, inputs, 1)[:, 0]

    result = explain("scorecam", model, inputs, targets, {"layer": "2"}, cam_layer="5")

    expected, bound = loop_scorecams(model, 3, inputs, targets)
    assert max_relative_deviation(result.values, expected) <= bound


def test_rejects_a_target_the_model_does_not_have() -> None:
    model = small_cnn()

    with pytest.raises(TargetError):
        explain(
            "scorecam",
            model,
            torch.randn(2, 3, 8, 8).double(),
            torch.tensor([0, 5]),
            {},
            cam_layer="5",
        )
    assert_untouched(model)


def test_rejects_a_layer_without_a_spatial_output() -> None:
    model = small_cnn()

    with pytest.raises(MethodParameterError, match="'7'") as caught:
        explain(
            "scorecam",
            model,
            torch.randn(1, 3, 8, 8).double(),
            torch.tensor([0]),
            {},
            cam_layer="7",
        )

    assert caught.value.parameter == "layer"
    assert_untouched(model)


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4)).double()
    targets = top_classes(model, inputs, 1)[:, 0]

    on_cpu = explain("scorecam", model, inputs, targets, {}, cam_layer="5").values
    on_device = explain(
        "scorecam", model.to(device), inputs.to(device), targets.to(device), {}, cam_layer="5"
    )

    assert on_device.values.device.type == device
    # In float64 (no TF32 either); each side's float32 softmax (its exp differs between devices)
    # within the loop's bound of the float64 map, so within twice that of each other.
    _, bound = loop_scorecams(model.cpu(), 6, inputs, targets)
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= 2 * bound


def negative_evidence_net() -> nn.Sequential:
    """Two ReLU channels of positive 3×3 kernels that raise class 1 and lower class 0; no biases,
    so that the all-zero input gets p = 0.5 for both; in float64."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 19.0).view(2, 1, 3, 3) / 20)
        model[4].weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    return model.double().eval().requires_grad_(False)


def test_a_target_every_channel_lowers_gets_a_zero_map_with_the_reason() -> None:
    model = negative_evidence_net()
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    inputs = image.expand(2, -1, -1, -1)

    result = explain("scorecam", model, inputs, torch.tensor([0, 1]), {}, cam_layer="1")

    # The premise, from the loop written from the paper: class 0's map is zero, class 1's not.
    for target, sign in ((0, -1), (1, 1)):
        cam, _, _ = loop_scorecam(model, 2, image, target)
        assert bool((cam == 0).all()) == (sign < 0)
    assert not result.values[0].any()
    assert result.values[1].amax() > 0
    warning = result.warnings[0]
    assert warning is not None and warning.kind == "all_zero"
    assert "every channel weight was negative" in warning.reason
    assert result.warnings[1] is None
