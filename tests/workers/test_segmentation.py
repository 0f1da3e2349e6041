"""Segmentation models explained as a class logit summed over a region (`workers.segmentation`).

The region semantics are checked analytically on a tiny network in float64: a map for a box has
no attribution outside the box's receptive field, a region's map is the sum of its pixels' maps
(the methods are linear in the explained score), DeepLIFT and integrated gradients sum to the
change of the region's logit sum, and rows with different regions in one call get the maps each
gets alone, whatever the method does to its batch. Captum and pytorch-grad-cam, given the region
score as their target function, are the independent references.
"""

import base64
import io

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from monai.networks.nets import UNet
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from schemas.methods.integrated_gradients import IntegratedGradientsParams
from schemas.models import InputSpec, ModelManifest
from schemas.regions import RegionTarget
from workers import segmentation
from workers.methods import explain
from workers.methods.base import TargetError
from workers.methods.registry import available_methods

SIZE = 12
CLASSES = 3
EPS32 = torch.finfo(torch.float32).eps
RECEPTIVE_RADIUS = 2  # two 3 × 3 convolutions
LINEAR_METHODS = ["saliency", "integrated_gradients", "deeplift", "lrp"]
"""Methods whose map is linear in the explained score (a fixed linear backward pass of it)."""
LOCAL_METHODS = [*LINEAR_METHODS, "smoothgrad", "guided_backprop"]
"""Methods whose map is a backward pass of the score, rectified or not: zero where the score
does not depend on the input."""
EXACT_PARAMS = {
    # One quadrature, never refined: the same nodes for every row and every score.
    "integrated_gradients": {"steps": 16, "max_steps": 16},
    "saliency": {"abs": False},
    "guided_backprop": {"abs": False},
    "smoothgrad": {"samples": 3},
    "rise": {"masks": 16, "cell": 3},
    "occlusion": {"window": 2, "stride": 1},
}


def tiny_segmenter() -> nn.Sequential:
    """conv 3 × 3 → ReLU → conv 3 × 3: pixel logits that depend on the 5 × 5 patch around the
    pixel only, in float64."""
    torch.manual_seed(3)
    return (
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, CLASSES, 3, padding=1))
        .double()
        .eval()
        .requires_grad_(False)
    )


def box_mask(x0: int, y0: int, x1: int, y1: int, size: int = SIZE) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.float64)
    mask[y0:y1, x0:x1] = 1
    return mask


def region_maps(
    network: nn.Module,
    inputs: torch.Tensor,
    method: str,
    regions: list[segmentation.Region],
    layer: str = "1",
) -> torch.Tensor:
    batch = segmentation.region_batch(network, network, regions)
    return explain(
        method,
        batch.model,
        inputs,
        batch.targets,
        EXACT_PARAMS.get(method, {}),
        cam_layer=layer,
        forward=batch.forward,
        probability=batch.probability,
    ).values.double()


def region_score(network: nn.Module, inputs: torch.Tensor, region: segmentation.Region) -> float:
    with torch.no_grad():
        return float((network(inputs)[0, region.class_index] * region.mask).sum())


@pytest.mark.parametrize("method", [*LOCAL_METHODS, "occlusion"])
def test_a_box_target_has_no_attribution_outside_its_receptive_field(method: str) -> None:
    network = tiny_segmenter()
    inputs = torch.randn(
        1, 1, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    x0, y0, x1, y1 = 3, 4, 6, 6
    values = region_maps(
        network, inputs, method, [segmentation.Region(1, "box", box_mask(x0, y0, x1, y1))]
    )[0]
    # Occlusion's 2 × 2 windows reach one pixel further than the pixel they are credited to.
    reach = RECEPTIVE_RADIUS + (1 if method == "occlusion" else 0)
    field = box_mask(max(0, x0 - reach), max(0, y0 - reach), x1 + reach, y1 + reach).bool()
    assert bool(values[~field].eq(0).all()), values
    assert float(values[field].abs().sum()) > 0


@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_a_region_map_is_the_sum_of_its_pixels_maps(method: str) -> None:
    network = tiny_segmenter()
    inputs = torch.randn(
        1, 1, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    pixels = [(2, 3), (2, 4), (7, 7), (10, 1)]
    region = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    singles = []
    for y, x in pixels:
        region[y, x] = 1
        singles.append(segmentation.Region(2, "mask", box_mask(x, y, x + 1, y + 1)))
    # One call for all rows: each copy the method makes keeps its own row's mask.
    values = region_maps(
        network,
        inputs.expand(5, -1, -1, -1),
        method,
        [segmentation.Region(2, "mask", region), *singles],
    )
    summed = values[1:].sum(dim=0)
    assert float(values[0].abs().max()) > 0
    # Exact in float64; each map is rounded to float32 once on the way out.
    assert bool(((values[0] - summed).abs() <= EPS32 * values.abs().sum(dim=0)).all())


@pytest.mark.parametrize("method", ["deeplift", "integrated_gradients"])
def test_deeplift_and_integrated_gradients_sum_to_the_change_of_the_region_score(
    method: str,
) -> None:
    network = tiny_segmenter()
    generator = torch.Generator().manual_seed(4)
    inputs = torch.rand(1, 1, SIZE, SIZE, dtype=torch.float64, generator=generator)
    region = segmentation.Region(0, "box", box_mask(2, 2, 9, 8))
    batch = segmentation.region_batch(network, network, [region])
    attribution = explain(
        method, batch.model, inputs, batch.targets, {}, cam_layer="1", forward=batch.forward
    )
    values = attribution.values.double()
    # Without a normalisation the black baseline is the image's darkest pixel value.
    black = torch.full_like(inputs, float(inputs.min()))
    change = region_score(network, inputs, region) - region_score(network, black, region)
    rounding = EPS32 * float(values.abs().sum())  # each value rounded to float32 once
    gap = abs(float(values.sum()) - change)
    if method == "deeplift":
        assert gap <= rounding  # exact on a ReLU network
    else:
        # The quadrature's own figure is the gap to the region score's change.
        reported = float(attribution.checks["completeness_gap"][0])
        assert reported == pytest.approx(gap / abs(change), abs=rounding / abs(change))
        # The refinement rule: the gap met the tolerance, or the steps ran to `max_steps` and
        # the map says it did not converge.
        defaults = IntegratedGradientsParams()
        steps = int(attribution.checks["steps"][0])
        if reported > defaults.tolerance:
            assert steps == defaults.max_steps
            warning = attribution.warnings[0] if attribution.warnings else None
            assert warning is not None and warning.kind == "not_converged"


@pytest.mark.parametrize(
    "method",
    sorted(set(available_methods(tiny_segmenter())) - {"cam"}),
)
def test_rows_with_different_regions_get_the_maps_each_gets_alone(method: str) -> None:
    network = tiny_segmenter()
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(2, 1, SIZE, SIZE, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        predicted = network(inputs).argmax(dim=1)
    regions = [
        segmentation.Region(1, "box", box_mask(0, 0, 6, 6)),
        segmentation.Region(
            int(predicted[1, 5, 5]), "predicted", (predicted[1] == predicted[1, 5, 5]).double()
        ),
        segmentation.Region(2, "box", box_mask(4, 4, 12, 10)),
    ]
    rows = inputs[[0, 1, 1]]
    together = region_maps(network, rows, method, regions)
    assert float(together.abs().max()) > 0
    for row, region in enumerate(regions):
        alone = region_maps(network, rows[row : row + 1], method, [region])[0]
        # The same float64 arithmetic up to the batch's order of sums, then one float32 rounding.
        gap = (together[row] - alone).abs()
        assert bool((gap <= EPS32 * alone.abs().amax() + 1e-12).all()), (method, float(gap.max()))


def test_saliency_and_integrated_gradients_agree_with_captum_on_the_region_score() -> None:
    network = tiny_segmenter()
    inputs = torch.randn(
        1, 1, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    )
    mask = box_mask(1, 2, 8, 9)

    def score(batch: torch.Tensor) -> torch.Tensor:
        return (network(batch)[:, 2] * mask).sum(dim=(1, 2))

    region = [segmentation.Region(2, "box", mask)]
    saliency = region_maps(network, inputs, "saliency", region)
    expected = Saliency(score).attribute(inputs, abs=False).sum(dim=1)
    # Ours come back as float32: one rounding of the float64 value.
    torch.testing.assert_close(saliency, expected, rtol=EPS32, atol=0)
    batch = segmentation.region_batch(network, network, region)
    ig = explain(
        "integrated_gradients",
        batch.model,
        inputs,
        batch.targets,
        {"steps": 64, "max_steps": 64, "baseline": "black"},
        cam_layer="1",
        forward=batch.forward,
    ).values.double()
    black = torch.full_like(inputs, float(inputs.min()))
    # Captum's trapezoid rule on 65 points weighs them 1/65 (halved at the ends); the rule on
    # 64 intervals is that times 65/64 (as in test_integrated_gradients).
    reference = (
        IntegratedGradients(score)
        .attribute(inputs, baselines=black, n_steps=65, method="riemann_trapezoid")
        .sum(dim=1)
        * 65
        / 64
    )
    # The same points and weights; float64 sums in another order, then one float32 rounding.
    torch.testing.assert_close(ig, reference, rtol=EPS32, atol=1e-12 * float(reference.abs().max()))


def small_unet() -> nn.Module:
    """MONAI's 2-D UNet with ReLUs and BatchNorm (its default InstanceNorm has no LRP rule):
    residual units, strided and transposed convolutions, skip concatenations, in float64."""
    torch.manual_seed(8)
    network = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=3,
        channels=(4, 8),
        strides=(2,),
        num_res_units=1,
        act="RELU",
        norm="BATCH",
    ).double()
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.randn(4, 1, 16, 16, dtype=torch.float64))
    return network.eval().requires_grad_(False)


@pytest.mark.parametrize("name", ["tiny", "unet"])
def test_lrp_epsilon_equals_captum_input_times_gradient_of_the_region_score(name: str) -> None:
    network = tiny_segmenter() if name == "tiny" else small_unet()
    size = SIZE if name == "tiny" else 16
    inputs = torch.randn(
        1, 1, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )
    mask = box_mask(2, 3, 10, 9, size)

    def score(batch: torch.Tensor) -> torch.Tensor:
        return (network(batch)[:, 1] * mask).sum(dim=(1, 2))

    batch = segmentation.region_batch(network, network, [segmentation.Region(1, "box", mask)])
    relevance = explain(
        "lrp",
        batch.model,
        inputs,
        batch.targets,
        {"composite": "epsilon", "first_layer": "same", "epsilon": 1e-15},
        cam_layer="",
        forward=batch.forward,
    ).values.double()
    # On a ReLU network LRP-ε with ε → 0 is gradient × input (Montavon et al. 2019).
    expected = InputXGradient(score).attribute(inputs).sum(dim=1).detach()
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(
        relevance, expected, rtol=EPS32, atol=1e-9 * float(expected.abs().max())
    )


def calibrated_deeplab(size: int = 64) -> nn.Module:
    torch.manual_seed(0)
    network = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.randn(4, 3, size, size))
    return segmentation.select_output(network.eval().requires_grad_(False), "out")


def test_gradcam_on_deeplab_agrees_with_pytorch_grad_cam_semantic_segmentation_target() -> None:
    network = calibrated_deeplab()
    inputs = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        predicted = network(inputs).argmax(dim=1)[0]
    category = int(predicted.flatten().mode().values)
    mask = (predicted == category).float()
    layer = "backbone.16"
    region = segmentation.Region(category, "predicted", mask)
    ours = region_maps(network, inputs, "gradcam", [region], layer).float()[0]
    reference_model = network  # pytorch-grad-cam hooks the layer; its targets read the tensor
    with GradCAM(model=reference_model, target_layers=[network.get_submodule(layer)]) as cam:
        reference_model.requires_grad_(True)
        try:
            theirs = torch.from_numpy(
                cam(inputs, targets=[SemanticSegmentationTarget(category, mask.numpy())])[0]
            )
        finally:
            reference_model.requires_grad_(False)
    scaled = (ours - ours.min()) / (ours.max() - ours.min())
    assert float(theirs.max()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(scaled, theirs, rtol=0, atol=1e-4)
    assert segmentation.REGION_MODULE not in dict(network.named_modules())


def test_predictions_list_the_classes_present_with_their_pixel_share() -> None:
    logits = torch.zeros(3, 2, 4, dtype=torch.float64)
    logits[2, :, :3] = 5.0  # 6 pixels of class 2
    logits[1, :, 3] = 1.0  # 2 pixels of class 1
    answers = segmentation.predictions(logits, ["background", "a", "b"])
    assert [(p.class_index, p.score, p.logit) for p in answers] == [(2, 0.75, 5.0), (1, 0.25, 1.0)]


def manifest(background: int | None = 0) -> ModelManifest:
    return ModelManifest(
        id="seg",
        version="1",
        format="onnx",
        labels=["background", "a", "b"],
        input=InputSpec(channels=1, height=4, width=4, mean=[0.0], std=[1.0]),
        task="segmentation",
        background=background,
    )


def png_b64(mask: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def two_class_logits() -> torch.Tensor:
    logits = torch.zeros(3, 4, 4)
    logits[0] = 1.0
    logits[1, :, :1] = 2.0  # class 1 on 4 pixels, class 0 (background) on 12
    return logits


def test_top1_is_the_largest_class_but_the_background() -> None:
    (region,) = segmentation.target_regions("top1", two_class_logits(), manifest(), (4, 4))
    assert region.class_index == 1 and region.kind == "predicted"
    assert region.mask.sum() == 4 and bool(region.mask[:, 0].eq(1).all())
    (region,) = segmentation.target_regions("top1", two_class_logits(), manifest(None), (4, 4))
    assert region.class_index == 0


def test_a_box_in_the_input_image_is_sampled_at_the_model_size() -> None:
    target = RegionTarget.model_validate({"class": 2, "box": [0, 0, 4, 2]})
    (region,) = segmentation.target_regions(target, two_class_logits(), manifest(), (8, 8))
    expected = torch.zeros(4, 4)
    expected[:1, :2] = 1  # the 8 × 8 image's top-left 4 × 2 pixels, halved
    assert region.kind == "box"
    torch.testing.assert_close(region.mask, expected)


def test_a_mask_target_is_its_png_non_zero_pixels() -> None:
    pixels = np.zeros((4, 4), dtype=bool)
    pixels[1:3, 2] = True
    target = RegionTarget.model_validate({"class": 1, "mask": png_b64(pixels)})
    (region,) = segmentation.target_regions(target, two_class_logits(), manifest(), (4, 4))
    torch.testing.assert_close(region.mask, torch.from_numpy(pixels.astype(np.float32)))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (2, "predicted on no pixel"),
        ({"class": 2, "region": "predicted"}, "predicted on no pixel"),
        ({"class": 1, "box": [0, 0, 5, 4]}, "reaches outside"),
        ({"class": 1, "mask": png_b64(np.ones((3, 4), dtype=bool))}, "not the input's"),
        ({"class": 1, "mask": png_b64(np.zeros((4, 4), dtype=bool))}, "covers no pixel"),
        ({"class": 3}, "outside 0..2"),
    ],
)
def test_an_empty_or_misfit_region_is_a_target_error(target: object, message: str) -> None:
    parsed = RegionTarget.model_validate(target) if isinstance(target, dict) else target
    with pytest.raises(TargetError, match=message):
        segmentation.target_regions(parsed, two_class_logits(), manifest(), (4, 4))  # type: ignore[arg-type]


def test_cam_is_refused_on_a_segmentation_network() -> None:
    assert "cam" not in available_methods(tiny_segmenter())
