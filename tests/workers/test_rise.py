"""RISE against its expectation for a model with affine probabilities, a plain loop over the same
masks, hand-computed masks, and ONNX Runtime."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from method_checks import (
    DEVICES,
    EPS32,
    assert_untouched,
    float32_rounding,
    max_relative_deviation,
)
from method_models import DEMO_MODEL, small_cnn
from rounding_bounds_cam import RecordingForward, float32_rise_bound
from torch import nn

from schemas.methods.rise import RiseParams
from workers.methods import TargetError, explain
from workers.methods.rise import draw_masks, smooth_masks
from workers.repository import LoadedModel, load_model

DEMO = DEMO_MODEL


def mask_gap_bound(
    expected: torch.Tensor, model: nn.Sequential, inputs: torch.Tensor, gap: float, p: float
) -> float:
    """The most `max_relative_deviation` that masks up to `gap` apart add, relative to `expected`,
    for `small_cnn`.

    Directly, Σ_i p_i Δm_i / (masks · p) ≤ gap / p. Through the model, the masked inputs move by
    ≤ gap · (the image's spread above black), the logits by ≤ λ times that, with λ the product of
    the layers' ∞-norms (largest Σ|weight| of an output; BatchNorm's largest |scale|; ReLU and
    pools 1), and each probability, so the map, by a factor within e^{±2Δz}.
    """
    lipschitz = 1.0
    for layer in model:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            lipschitz *= float(layer.weight.abs().flatten(1).sum(1).max())
        elif isinstance(layer, nn.BatchNorm2d):
            assert layer.running_var is not None
            scale = layer.weight.abs() / (layer.running_var + layer.eps).sqrt()
            lipschitz *= float(scale.max())
    spread = float((inputs - inputs.amin(dim=(2, 3), keepdim=True)).max())
    spans = expected.flatten(1).amax(1) - expected.flatten(1).amin(1)
    largest = expected.flatten(1).amax(1)
    through_model = math.expm1(2 * lipschitz * gap * spread) * largest
    return float(((gap / p + through_model) / spans).max())


def chunked_masks(params: RiseParams, size: int) -> torch.Tensor:
    """The masks of `params` for a `size` × `size` image as the method makes them: drawn at
    once, smoothed `params.batch_size` at a time."""
    grids, shifts = draw_masks(params.masks, params.cell, params.p, (size, size), seed=params.seed)
    chunks = zip(grids.split(params.batch_size), shifts.split(params.batch_size), strict=True)
    return torch.cat([smooth_masks(grid, shift, (size, size)) for grid, shift in chunks])


class AffineProbabilities(nn.Module):
    """Two classes whose softmax probabilities are q(x) = bias + w . x and 1 - q(x)."""

    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        q = self.bias + inputs.flatten(1) @ self.weight.flatten()
        return torch.log(torch.stack([q, 1 - q], dim=1))


def expected_rise_map(
    model: AffineProbabilities, image: torch.Tensor, cell: int, p: float
) -> torch.Tensor:
    """The limit of RISE for class 0 of `model` on `image` (C, H, W), H = W, over infinitely many
    masks.

    With black d (each channel's minimum), a mask m gives the input d + (x - d) m, so the score is
    f(m) = beta + sum_v g_v m(v), with beta = q(d) and g_v = sum_c w_cv (x_cv - d_c). A mask
    pixel is a bilinear blend m(u) = sum_k a_k(u) b_k of independent Bernoulli(p) cells b_k, with
    weights a_k summing to 1, so E[m(u)] = p and E[m(u) m(v)] = p^2 + p (1 - p) K(u, v) with
    K(u, v) = E_shift[sum_k a_k(u) a_k(v)]. Hence
    E[f m(u)] / p = beta + p sum_v g_v + (1 - p) (K g)(u).
    """
    darkest = image.amin(dim=(1, 2), keepdim=True)
    beta = model.bias + float((model.weight * darkest).sum())
    g = (model.weight * (image - darkest)).sum(dim=0)
    size = g.shape[0]
    side = math.ceil(size / cell)
    # Each cell's bilinear weights a_k over the upsampled mask, before cropping.
    weights = F.interpolate(
        torch.eye(cell * cell).view(-1, 1, cell, cell),
        size=((cell + 1) * side, (cell + 1) * side),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    kernel_g = torch.zeros(size * size)
    for top in range(side):
        for left in range(side):
            crop = weights[:, top : top + size, left : left + size].reshape(cell * cell, -1)
            kernel_g += crop.T @ (crop @ g.flatten())
    kernel_g = (kernel_g / side**2).view(size, size)
    return beta + p * g.sum() + (1 - p) * kernel_g


def test_converges_to_the_expectation_for_affine_probabilities() -> None:
    # p != 1/2, so that p and 1 - p cannot be confused.
    p = 0.25
    torch.manual_seed(0)
    # Normalised inputs need not reach 0: black must be each channel's darkest value, not 0.
    image = torch.rand(2, 16, 16) + 0.5
    rows, columns = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    blob = (rows - 4) ** 2 + (columns - 5) ** 2 < 20
    darkest = image.amin(dim=(1, 2), keepdim=True)
    weight = torch.where(blob, 1.0, -0.2) * torch.rand(2, 16, 16)
    contributions = weight * (image - darkest)
    # Scaled so that q is 0.05 + the negative contributions on black and stays in [0.05, 0.95]
    # under every mask.
    scale = 0.9 / float(contributions.abs().sum())
    negative = scale * float((-contributions).clamp(min=0).sum())
    weight = weight * scale
    model = AffineProbabilities(weight, 0.05 + negative - float((weight * darkest).sum()))
    inputs = torch.stack([image, image])
    params = {"masks": 8000, "cell": 4, "p": p, "batch_size": 1024}

    # 8 x 8000 masks; the Monte Carlo error shrinks as 1 / sqrt(masks).
    estimate = torch.stack(
        [
            explain(
                "rise", model, inputs, torch.tensor([0, 1]), params | {"seed": seed}, cam_layer=""
            ).values
            for seed in range(8)
        ]
    ).mean(dim=0)

    expected = expected_rise_map(model, image, cell=4, p=p)
    # Class 1 scores 1 - q, and E[m(u)] / p = 1. The deviation is 6 % of the range here; taking
    # black as 0, swapping p and 1 - p, or not shifting the masks gives 40 % to over 100 %.
    assert max_relative_deviation(estimate, torch.stack([expected, 1 - expected])) < 0.1


def loop_rise(
    model: nn.Module, image: torch.Tensor, target: int, masks: torch.Tensor, p: float
) -> torch.Tensor:
    """RISE written plainly, one mask at a time: image (C, H, W), masks (M, H, W)."""
    black = image.amin(dim=(1, 2), keepdim=True)
    saliency = torch.zeros(image.shape[1:], dtype=image.dtype)
    for mask in masks:
        masked = mask * image + (1 - mask) * black
        probability = torch.softmax(model(masked[None]), dim=1)[0, target]
        saliency += probability * mask
    return saliency / (len(masks) * p)


def test_equals_a_plain_loop_over_the_same_masks() -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1)).double()
    # The same image twice with different targets, then another image.
    inputs = torch.stack([images[0], images[0], images[1]])
    targets = torch.tensor([0, 3, 4])
    params = {"masks": 50, "cell": 3, "p": 0.4, "seed": 7, "batch_size": 16}

    forward = RecordingForward(model)

    result = explain("rise", model, inputs, targets, params, cam_layer="4", forward=forward)

    masks = chunked_masks(RiseParams.model_validate(params), 20)
    expected = torch.stack(
        [loop_rise(model, inputs[i], int(targets[i]), masks, 0.4) for i in range(3)]
    )
    assert result.values.shape == (3, 20, 20)
    assert result.values.dtype == torch.float32
    assert not result.signed
    assert bool((result.values >= 0).all())
    bound = float32_rise_bound(expected, forward.largest_logit, 5, masks=50, batch_size=16)
    assert max_relative_deviation(result.values, expected) <= bound
    assert not torch.allclose(result.values[0], result.values[1])
    assert_untouched(model)


def test_masks_are_the_upsampled_grid_cropped_at_the_shift() -> None:
    # Cell side ceil(4 / 2) = 2: the 2 x 2 grid is upsampled to 6 x 6, a factor of 3. Along each
    # axis, bilinear interpolation (half-pixel centres, edges held) of cells (1, 0) gives
    # 1, 1, 2/3, 1/3, 0, 0.
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    profile = torch.tensor([1.0, 1.0, 2 / 3, 1 / 3, 0.0, 0.0])

    mask = smooth_masks(grid, torch.tensor([[1, 0]]), (4, 4))

    # Each linear weight 1 − λ, with λ from (i + ½)·(2/6) − ½ in float32 (roundings of the scale,
    # the product and the shift, all below 2), is within 3.25 eps32 of exact; the mask multiplies
    # two weights ≤ 1 and the expected value two rounded thirds: within 8 eps32 of each other.
    torch.testing.assert_close(
        mask[0], torch.outer(profile[1:5], profile[0:4]), rtol=0.0, atol=8 * EPS32
    )


def test_draws_cells_with_probability_p_and_shifts_within_a_cell() -> None:
    grids, shifts = draw_masks(4000, 5, 0.3, (32, 20), seed=3)

    assert grids.shape == (4000, 5, 5)
    assert set(grids.unique().tolist()) == {0.0, 1.0}
    assert abs(float(grids.mean()) - 0.3) < 0.01
    # Cell sides ceil(32 / 5) = 7 and ceil(20 / 5) = 4: every shift within them occurs.
    assert set(shifts[:, 0].tolist()) == set(range(7))
    assert set(shifts[:, 1].tolist()) == set(range(4))
    masks = smooth_masks(grids[:500], shifts[:500], (32, 20))
    assert masks.shape == (500, 32, 20)
    # Bilinear blends of 0 and 1, with weights ≥ 0 that sum to 1 within the rounding above.
    assert float(masks.min()) >= 0.0
    assert float(masks.max()) <= 1.0 + 8 * EPS32


def test_the_same_seed_gives_the_same_map_and_another_seed_another() -> None:
    model = small_cnn()
    inputs = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)).double()
    targets = torch.tensor([2])
    params = {"masks": 40, "cell": 4, "seed": 11, "batch_size": 40}
    forward = RecordingForward(model)

    first = explain("rise", model, inputs, targets, params, cam_layer="4", forward=forward).values
    again = explain("rise", model, inputs, targets, params, cam_layer="4").values
    other_batches = explain(
        "rise", model, inputs, targets, params | {"batch_size": 7}, cam_layer="4"
    ).values
    other_seed = explain(
        "rise", model, inputs, targets, params | {"seed": 12}, cam_layer="4"
    ).values

    assert torch.equal(first, again)
    # Smoothing the masks 7 at a time or all 40 at once may round them differently (by ~1 ulp,
    # if at all: each value sums two nonzero products along each axis); what that and both
    # sides' float32 arithmetic on logits ~1e-16 apart can make.
    gap = float(
        (
            chunked_masks(RiseParams.model_validate(params | {"batch_size": 7}), 16)
            - chunked_masks(RiseParams.model_validate(params), 16)
        )
        .abs()
        .max()
    )
    bound = float32_rise_bound(first, forward.largest_logit, 5, masks=40, batch_size=7)
    bound = 2 * bound + mask_gap_bound(first, model, inputs, gap, 0.5)
    assert max_relative_deviation(other_batches, first) <= bound
    assert max_relative_deviation(other_seed, first) > 0.01


def test_a_batch_equals_single_image_calls_and_repeated_images_share_passes() -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    inputs = torch.stack([images[0], images[1], images[0]])
    targets = torch.tensor([1, 1, 4])
    params = {"masks": 30, "batch_size": 8}
    counting_forward = RecordingForward(model)
    rows = counting_forward.rows

    batch = explain("rise", model, inputs, targets, params, cam_layer="4", forward=counting_forward)
    singles = torch.cat(
        [
            explain(
                "rise", model, inputs[i : i + 1], targets[i : i + 1], params, cam_layer="4"
            ).values
            for i in range(3)
        ]
    )

    # The same masks; both sides' float32 arithmetic on logits ~1e-16 apart.
    bound = float32_rise_bound(singles, counting_forward.largest_logit, 5, masks=30, batch_size=8)
    assert max_relative_deviation(batch.values, singles) <= 2 * bound
    # 30 masks per distinct image, at most 8 per pass: two images, not three rows.
    assert sum(rows) == 2 * 30
    assert max(rows) <= 8


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


def test_onnx_runtime_gives_the_pytorch_map(demo: LoadedModel, demo_onnx: LoadedModel) -> None:
    image = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(4))
    inputs = torch.cat([image, image])
    targets = torch.tensor([1, 2])
    params = {"masks": 48, "batch_size": 32}
    # ONNX Runtime runs float32 only, so both stay in float32. Each pass through ONNX Runtime is
    # also run through PyTorch, to know how far apart the two runtimes' logits are (δ).
    onnx_forward = RecordingForward(demo_onnx.forward_logits, twin=demo.forward_logits)

    on_onnx = explain(
        "rise",
        demo_onnx.module,
        inputs,
        targets,
        params,
        cam_layer=demo_onnx.default_cam_layer,
        forward=onnx_forward,
    )
    on_torch = explain("rise", demo.module, inputs, targets, params, cam_layer="unused")

    assert sum(onnx_forward.rows) == 48
    # The same masks and inputs on both sides. Logits δ apart move each probability by a factor
    # within e^{±2δ}, and so the map, a sum of probabilities times masks ≥ 0, by (e^{2δ} − 1) of
    # itself; each side's float32 arithmetic after the logits adds its `float32_rise_bound`.
    gap = float32_rounding(on_torch.values, 1) * math.expm1(2 * onnx_forward.twin_gap) / EPS32
    arithmetic = float32_rise_bound(on_torch.values, onnx_forward.largest_logit, 3, 48, 32)
    assert max_relative_deviation(on_onnx.values, on_torch.values) <= gap + 2 * arithmetic
    assert_untouched(demo.module)


def test_rejects_a_target_the_model_does_not_have() -> None:
    with pytest.raises(TargetError):
        explain(
            "rise",
            small_cnn(),
            torch.randn(2, 3, 8, 8).double(),
            torch.tensor([5, 0]),
            {"masks": 4},
            cam_layer="4",
        )


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device_matches_cpu(device: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    targets = torch.tensor([4, 0, 2])
    params = {"masks": 40, "cell": 5, "seed": 3}
    forward = RecordingForward(model)

    on_cpu = explain("rise", model, inputs, targets, params, cam_layer="4", forward=forward).values
    on_device = explain(
        "rise", model.to(device), inputs.to(device), targets.to(device), params, cam_layer="4"
    )

    assert on_device.values.device.type == device
    # The device may round the masks differently from the CPU (by ~1 ulp); what that and, in
    # float64 (no TF32 either), both sides' float32 arithmetic on logits ~1e-15 apart can make.
    grids, shifts = draw_masks(40, 5, 0.5, (16, 16), seed=3)
    on_device_masks = smooth_masks(grids.to(device), shifts.to(device), (16, 16)).cpu()
    gap = float((on_device_masks - smooth_masks(grids, shifts, (16, 16))).abs().max())
    bound = float32_rise_bound(on_cpu, forward.largest_logit, 5, masks=40)
    bound = 2 * bound + mask_gap_bound(on_cpu, model.cpu(), inputs, gap, 0.5)
    assert max_relative_deviation(on_device.values.cpu(), on_cpu) <= bound
