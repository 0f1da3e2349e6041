"""MONAI's DenseNet121 (2-D, one grayscale channel, three classes, random weights with calibrated
BatchNorm) served from the model repository as safetensors + `monai.networks.nets:DenseNet121`
and as ONNX: every method runs on both and the ONNX twin gives the same maps; batches equal
single-image calls; LRP conserves the logit without biases; DeepLIFT is complete; Grad-CAM is
Captum's LayerGradCam.

The twin compared with the PyTorch model is exported with BatchNorm kept as its own node, so that
both compute the same operations. The exporter's default folds each BatchNorm that follows a
convolution (59 of 121 here) into its weights; that moves pre-activations by ~1e-5, enough to
switch a ReLU sitting that close to zero, and plain input gradients (saliency, SmoothGrad,
integrated gradients) then change by up to ~1 % of the map's range — as much as under float32
round-off of the input (`bench/twin_sensitivity.py`). The zero-bias copy used for LRP's
conservation is exported folded, so that the folded conversion is covered too.
"""

import copy
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from captum.attr import LayerAttribution, LayerGradCam
from method_checks import EPS32, assert_untouched, max_relative_deviation
from monai.networks.nets import DenseNet121
from torch import nn

from schemas.models import InputSpec
from workers.methods import METHODS, available_methods, explain
from workers.methods.baselines import make_baseline
from workers.repository import LoadedModel, load_model

CPU = torch.device("cpu")
SIZE = 64
FACTORY = "monai.networks.nets:DenseNet121"
KWARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3}
LABELS = ["normal", "benign", "malignant"]
INPUT = InputSpec(channels=1, height=SIZE, width=SIZE, mean=[0.5], std=[0.25])
PATHS = ["torch", "onnx"]

# Cheap settings: the methods' accuracy is tested in their own files; here they must agree.
CHEAP: dict[str, dict[str, object]] = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 16, "max_steps": 16},
    "rise": {"masks": 64},
    "occlusion": {"window": 16, "stride": 16},
    "scorecam": {"batch_size": 256},
}
# Score-CAM costs one forward pass per channel: the default layer has 1024, transition1 has 128.
SCORECAM_LAYER = {
    "torch": "features.transition1.pool",
    "onnx": "features/transition1/pool/AveragePool",
}
DEFAULT_CAM_LAYER = {"torch": "class_layers.relu", "onnx": "class_layers/relu/Relu"}
# Methods whose map changes where a ReLU switches; batches of them are compared in float64.
RELU_SWITCH_SENSITIVE = {"guided_backprop"}
# The twin's module (onnx2torch) runs torch's own kernels on the same float32 weights, so its
# forward matches to the bit and only autograd's order of summation where branches meet differs:
# a rounding or so per layer, 4 · 121 layers · eps32 ≈ 5.8e-5 of the map's largest value. ONNX
# Runtime (occlusion's and RISE's forwards) sums each dot product in its own order, an error
# growing like eps32 · √(layers · fan-in): 2 · eps32 · √(121 · 1152) ≈ 8.9e-5. 1e-4 covers both.
TWIN_TOLERANCE = 1e-4


def calibrated_densenet() -> nn.Module:
    """MONAI's DenseNet121 with seeded random weights and BatchNorm statistics of random data."""
    torch.manual_seed(0)
    model = DenseNet121(**KWARGS)  # type: ignore[arg-type]
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 1, SIZE, SIZE))
    return model.eval().requires_grad_(False)


def without_biases(model: nn.Module) -> nn.Module:
    """A copy whose layers add nothing: no bias, no BatchNorm shift (so folding adds none)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None
                module.running_mean.zero_()
                module.bias.zero_()
    return model


def write_manifest(version_dir: Path, **fields: object) -> None:
    manifest = {
        "id": version_dir.parent.name,
        "version": version_dir.name,
        "labels": LABELS,
        "input": INPUT.model_dump(),
        **fields,
    }
    version_dir.mkdir(parents=True)
    (version_dir / "manifest.json").write_text(json.dumps(manifest))


def save_safetensors(model: nn.Module, version_dir: Path) -> Path:
    """`model` as safetensors with a manifest naming MONAI's factory and its kwargs."""
    write_manifest(
        version_dir,
        format="safetensors",
        architecture={"factory": FACTORY, "kwargs": KWARGS},
    )
    safetensors.torch.save_file(model.state_dict(), version_dir / "model.safetensors")
    return version_dir


def save_onnx(model: nn.Module, version_dir: Path, *, fold_batch_norm: bool) -> Path:
    """`model` exported to ONNX (TorchScript exporter, opset 17, dynamic batch).

    The exporter folds BatchNorm into the preceding convolution in eval mode; with
    `fold_batch_norm` False it keeps every BatchNormalization node (TrainingMode.PRESERVE on a
    model in eval mode).
    """
    write_manifest(version_dir, format="onnx")
    mode = torch.onnx.TrainingMode.EVAL if fold_batch_norm else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, SIZE, SIZE),),
            version_dir / "model.onnx",
            dynamo=False,
            opset_version=17,
            training=mode,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return version_dir


def load_twins(
    model: nn.Module, repository: Path, name: str, *, fold_batch_norm: bool
) -> dict[str, LoadedModel]:
    """`model` written to `<name>/1` (safetensors) and `<name>-onnx/1`, loaded back by path."""
    onnx_dir = save_onnx(model, repository / f"{name}-onnx" / "1", fold_batch_norm=fold_batch_norm)
    return {
        "torch": load_model(save_safetensors(model, repository / name / "1"), CPU),
        "onnx": load_model(onnx_dir, CPU),
    }


@pytest.fixture(scope="module")
def network() -> nn.Module:
    return calibrated_densenet()


@pytest.fixture(scope="module")
def twins(network: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """The network loaded from the repository, by path: "torch" (safetensors) and "onnx"."""
    repository = tmp_path_factory.mktemp("repository")
    return load_twins(network, repository, "monai-densenet", fold_batch_norm=False)


@pytest.fixture(scope="module")
def unbiased_twins(
    network: nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, LoadedModel]:
    """The zero-bias copy, loaded from the repository in both formats."""
    repository = tmp_path_factory.mktemp("repository")
    return load_twins(
        without_biases(network), repository, "monai-densenet-unbiased", fold_batch_norm=True
    )


def images(count: int, seed: int = 1) -> torch.Tensor:
    """Grayscale images normalised as the manifest says: pixels in [0, 1], (p - 0.5) / 0.25."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, 1, SIZE, SIZE, generator=generator)
    return (pixels - INPUT.mean[0]) / INPUT.std[0]


# On these images and targets every CAM of the default layer is non-zero (with random weights a
# class can have no positive evidence anywhere, which leaves a map that compares as empty).
INPUTS = images(3)
TARGETS = torch.tensor([2, 0, 1])


def run(  # noqa: PLR0913 - method, model, path, batch, parameters: each varies by test
    method: str,
    loaded: LoadedModel,
    path: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: dict[str, object] | None = None,
) -> torch.Tensor:
    """The maps `method` gives as the worker computes them: ONNX Runtime for forward passes."""
    if params is None:
        params = dict(CHEAP.get(method, {}))
        if method == "scorecam":
            params["layer"] = SCORECAM_LAYER[path]
    forward = loaded.forward_logits if loaded.onnx_session is not None else None
    result = explain(
        method,
        loaded.module,
        inputs,
        targets,
        params,
        cam_layer=loaded.default_cam_layer,
        forward=forward,
    )
    assert result.values.shape == (len(inputs), SIZE, SIZE)
    assert result.values.dtype == torch.float32
    assert bool(result.values.isfinite().all())
    return result.values


def target_logits(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).gather(1, targets[:, None])[:, 0].double()


def test_loads_in_both_formats_with_every_method_available(
    network: nn.Module, twins: dict[str, LoadedModel]
) -> None:
    inputs = INPUTS
    expected = network(inputs)

    # The same network with the same weights: the same arithmetic, equal to the bit.
    torch.testing.assert_close(twins["torch"].forward_logits(inputs), expected, rtol=0, atol=0)
    # ONNX Runtime's summation order: ≈ 2 · eps32 · √(121 · 1152) of the logits' magnitude.
    gap = (twins["onnx"].forward_logits(inputs) - expected).abs().max()
    assert float(gap) <= 2 * EPS32 * (121 * 1152) ** 0.5 * float(expected.abs().max()), gap
    assert twins["torch"].manifest.architecture is not None
    assert twins["torch"].manifest.architecture.factory == FACTORY
    assert isinstance(twins["torch"].module, DenseNet121)
    for path in PATHS:
        loaded = twins[path]
        assert loaded.default_cam_layer == DEFAULT_CAM_LAYER[path]
        assert SCORECAM_LAYER[path] in loaded.cam_layers
        assert available_methods(loaded.module) == sorted(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_the_same_map_through_onnx(
    twins: dict[str, LoadedModel], method: str
) -> None:
    inputs, targets = INPUTS[:2], TARGETS[:2]

    maps = {path: run(method, twins[path], path, inputs, targets) for path in PATHS}

    assert max_relative_deviation(maps["onnx"], maps["torch"]) < TWIN_TOLERANCE
    assert_untouched(twins["torch"].module, frozen=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "method", ["gradcam", "gradcam_pp", "lrp", "deeplift", "occlusion", "guided_backprop"]
)
def test_a_batch_with_per_sample_targets_equals_single_calls(
    twins: dict[str, LoadedModel], method: str, path: str
) -> None:
    loaded, inputs = twins[path], INPUTS
    if method in RELU_SWITCH_SENSITIVE:
        # In float32 the convolutions round differently for a batch of 3 and of 1 (~2e-5 on
        # pre-activations), which switches a ReLU of image 1 and moves its guided-backprop map
        # by 2e-4 of its range; in float64 nothing switches and the batching itself is seen.
        loaded = replace(loaded, module=copy.deepcopy(loaded.module).double())
        inputs = inputs.double()

    batch = run(method, loaded, path, inputs, TARGETS)
    singles = torch.cat(
        [run(method, loaded, path, inputs[i : i + 1], TARGETS[i : i + 1]) for i in range(3)]
    )

    # A batch of 3 and of 1 take other convolution kernels: the sums' order differs, by the same
    # per-layer rounding as the twin's (TWIN_TOLERANCE); a mixed-up target moves the map by ~1.
    assert max_relative_deviation(batch, singles) < TWIN_TOLERANCE
    assert not torch.allclose(batch[0], batch[1])
    assert not torch.allclose(batch[1], batch[2])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("composite", "first_layer"), [("epsilon", "same"), ("epsilon_plus", "zbox")]
)
def test_lrp_relevance_sums_to_the_target_logit_without_biases(
    unbiased_twins: dict[str, LoadedModel], path: str, composite: str, first_layer: str
) -> None:
    loaded = unbiased_twins[path]
    inputs, targets = INPUTS[:2], TARGETS[:2]
    params: dict[str, object] = {
        "composite": composite,
        "first_layer": first_layer,
        "epsilon": 1e-9,
    }

    relevance = run("lrp", loaded, path, inputs, targets, params)

    logits = target_logits(loaded.module, inputs, targets)
    assert bool((logits.abs() > 1e-3).all())
    errors = (relevance.double().sum(dim=(1, 2)) - logits).abs() / logits.abs()
    # In float32, as served. Each rule layer hands on its relevance with float32 sums, so the
    # total drifts by ≲ eps32 per layer of the magnitudes summed, Σ|R|; ε = 1e-9 absorbs ~ε/|z|
    # of a unit's relevance, far below. A wrong rule, sum or fold loses a percent or more.
    layers = sum(
        isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in loaded.module.modules()
    )
    magnitude = relevance.double().abs().sum(dim=(1, 2)) / logits.abs()
    assert bool((errors <= layers * EPS32 * magnitude).all()), (errors, layers, magnitude)
    # With ε, relevance cancels: Σ|R| reaches ~100 |logit|, a bound of ~0.3 % at most.
    assert float((layers * EPS32 * magnitude).max()) < 0.01, "the bound would hide a wrong rule"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("baseline", ["black", "blur", "mean", "uniform"])
def test_deeplift_sums_to_the_change_of_the_logit(
    twins: dict[str, LoadedModel], path: str, baseline: str
) -> None:
    loaded = twins[path]
    inputs, targets = INPUTS[:2], TARGETS[:2]

    attributions = run("deeplift", loaded, path, inputs, targets, {"baseline": baseline})

    baselines = make_baseline(baseline, inputs, seed=0)  # type: ignore[arg-type]
    change = target_logits(loaded.module, inputs, targets) - target_logits(
        loaded.module, baselines, targets
    )
    assert bool((change.abs() > 1e-3).all()), "the logit barely changes; the check would be empty"
    errors = (attributions.double().sum(dim=(1, 2)) - change).abs() / change.abs()
    # In float32, as served: the multipliers pass back through each layer with float32 sums, so
    # the total drifts by ≲ eps32 per layer of the magnitudes summed, Σ|attribution|, and the
    # two logits of `change` by as much each. A wrong rule misses by a percent or more.
    layers = sum(
        isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in loaded.module.modules()
    )
    magnitude = attributions.double().abs().sum(dim=(1, 2)) / change.abs()
    bound = layers * EPS32 * (magnitude + 2)
    assert bool((errors <= bound).all()), (errors, layers, magnitude)
    assert float(bound.max()) < 0.01, "the bound would hide a wrong rule"


@pytest.mark.parametrize("path", PATHS)
def test_gradcam_matches_captum_on_the_default_cam_layer(
    twins: dict[str, LoadedModel], path: str
) -> None:
    loaded = twins[path]

    result = run("gradcam", loaded, path, INPUTS, TARGETS, {})

    layer = loaded.module.get_submodule(loaded.default_cam_layer)
    attribution = LayerGradCam(loaded.module, layer).attribute(
        INPUTS, target=TARGETS.tolist(), relu_attributions=True
    )
    expected = LayerAttribution.interpolate(attribution, (SIZE, SIZE), interpolate_mode="bilinear")
    # The same activations and gradients at the layer, weighed and summed in another order: a
    # few float32 roundings of the map, far below 1e-4 of its range.
    assert max_relative_deviation(result, expected[:, 0].detach()) < 1e-4
    assert_untouched(loaded.module, frozen=True)
