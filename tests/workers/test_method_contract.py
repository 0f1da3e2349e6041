"""What every registered method must do, checked the same way for each (`workers.methods.METHODS`,
so a new method is checked without editing this file): a batch with a different target per row
equals single-image calls, the model and the inputs are left as they were, no parameter ever
takes part in autograd, the map is (N, H, W) float32, finite and signed as its parameters say,
on every device here, and the model's ONNX twin, loaded the way the worker loads it, gives the
same map. The methods' own files keep what is theirs: references and axioms.

A method runs on a contract model exactly when the model offers all it `needs`
(`MethodParams.needs`): each model below says what it offers, and `supports` must agree.
"""

import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from method_checks import DEVICES, assert_untouched, float32_rounding, max_relative_deviation
from method_models import data_dependent, pooled_2x2, residual_net, small_cnn
from rounding_bounds_cam import float32_drop_bound, float32_rise_bound, float32_softmax_bound
from torch import nn
from typing_extensions import override

from schemas.methods import LayerParams, MethodParams, Need
from schemas.methods.saliency import SaliencyParams
from workers.methods import METHODS, AttributionMap, AttributionMethod, Batch, explain
from workers.methods.base import ForwardOnlyMethod, target_score
from workers.repository import LoadedModel, find_cam_layers, load_model

EVERY_NEED: frozenset[Need] = frozenset(
    {"gradients", "cam_layer", "relu", "linear_head", "canonical_form", "piecewise_linear"}
)


@dataclass(frozen=True)
class ContractModel:
    """A model the contract explains: how to build it, what it offers, its layer for CAMs."""

    build: Callable[[], nn.Module]
    offers: frozenset[Need]
    cam_layer: str
    channels: int = 3
    classes: int = 5


MODELS = {
    # Sequential convolutions, BatchNorm, ReLU modules, a max-pool, a GAP + linear head.
    "small_cnn": ContractModel(small_cnn, EVERY_NEED, cam_layer="6"),
    # Residual sums through one in-place ReLU module called three times, a spatial mean + linear.
    "residual_net": ContractModel(residual_net, EVERY_NEED, cam_layer="conv2", classes=4),
    # Pooled to 2 × 2 before the linear layer: no global-average-pool + linear head.
    "pooled_2x2": ContractModel(pooled_2x2, EVERY_NEED - {"linear_head"}, cam_layer="2"),
    # A branch on a tensor value: torch.fx cannot trace it, so no canonical form, no head found.
    "untraceable": ContractModel(
        data_dependent, frozenset({"gradients", "cam_layer"}), cam_layer="body.6"
    ),
}

# Cheap settings for the methods whose cost grows with a parameter; the rest run their defaults.
CHEAP: dict[str, dict[str, object]] = {
    "smoothgrad": {"samples": 3, "seed": 4},
    "integrated_gradients": {"steps": 8, "max_steps": 16},
    "rise": {"masks": 40, "batch_size": 16, "seed": 3},
    "occlusion": {"window": 6, "stride": 4, "batch_size": 5},
    "scorecam": {"batch_size": 8},
    "deeplift": {"baseline": "uniform", "seed": 5},
}

SIZE = 16


def applies(method: str, model: str) -> bool:
    """Whether `model` offers all that `method` needs."""
    return METHODS[method].params_model.needs <= MODELS[model].offers


PAIRS = [(method, model) for method in sorted(METHODS) for model in MODELS]


def params_of(method: str, cam_layer: str) -> MethodParams:
    return METHODS[method].resolve(CHEAP.get(method, {}), cam_layer=cam_layer)


def classes_with_content(
    method: str, model: nn.Module, image: torch.Tensor, params: MethodParams, cam_layer: str
) -> list[int]:
    """The classes whose map of `image` (C, H, W) is not constant."""
    classes = model(image[None]).shape[1]
    maps = explain(
        method,
        model,
        image.expand(classes, -1, -1, -1),
        torch.arange(classes, device=image.device),
        params,
        cam_layer=cam_layer,
    ).values.flatten(1)
    return [int(c) for c in (maps.amax(1) > maps.amin(1)).nonzero()[:, 0]]


class LogitRecorder:
    """While open (`recording`), the largest |logit| the model's forward passes return."""

    def __init__(self) -> None:
        self.largest_logit = 0.0

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[None]:
        def record(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
            self.largest_logit = max(self.largest_logit, float(output.detach().abs().max()))

        handle = model.register_forward_hook(record)
        try:
            yield
        finally:
            handle.remove()


def layer_magnitude(model: nn.Module, layer: str, inputs: torch.Tensor) -> torch.Tensor:
    """Σ_k |A_k| of the layer's output on `inputs`, upsampled bilinearly to them: (N, H, W)."""
    outputs: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _module, _args, output: outputs.append(output.detach())
    )
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    magnitude = outputs[0].abs().sum(dim=1, keepdim=True)
    upsampled = F.interpolate(magnitude, size=inputs.shape[2:], mode="bilinear")
    return upsampled[:, 0].cpu()


def batch_bound(
    params: MethodParams,
    singles: torch.Tensor,
    largest_logit: float,
    magnitude: Callable[[], torch.Tensor],
    classes: int,
) -> float:
    """The most `max_relative_deviation` a batch's maps may have from single-image calls'.

    The models are in float64, so both sides compute the same float64 values to ~1e-15 of them;
    what can separate the maps is the float32 arithmetic each side does after that, twice where
    it is more than the map's final rounding (a rounding of values ~1e-15 apart lands ≤ 1 ulp
    apart, ≤ eps32 · |value|). Per family:
    """
    method = params.method
    p: Any = params
    if method == "occlusion":
        # Each side within its `float32_drop_bound` of the float64 drops.
        return 2 * float32_drop_bound(singles, largest_logit, p.window, p.stride, p.batch_size)
    if method == "rise":
        # Each side within its `float32_rise_bound` of the float64 sums over the same masks.
        return 2 * float32_rise_bound(singles, largest_logit, classes, p.masks, p.batch_size)
    if method == "scorecam":
        # Each side within its `float32_softmax_bound` of the float64 map; p_k + p_0 ≤ 2.
        bound = float32_softmax_bound(singles, 2 * magnitude(), largest_logit, classes)
        return 2 * bound
    if method == "smoothgrad":
        # Each side rounds `samples` unsigned float64 maps, sums them and divides: 2 × (n + 2).
        assert not p.is_signed(), "the bound below holds for the unsigned mean"
        return float32_rounding(singles, 2 * (p.samples + 2))
    if method == "guided_gradcam":
        # The guided map and Grad-CAM each rounded to float32 and their product rounded, per side.
        return float32_rounding(singles, 3)
    if method in {"integrated_gradients", "deeplift", "lrp"}:
        # Deeper float64 sums (~1e-13 of the values) before the one rounding: one to spare.
        return float32_rounding(singles, 2)
    if method in {"saliency", "guided_backprop", "cam"} or isinstance(params, LayerParams):
        # A float64 map (a gradient, or a CAM of float64 activations) rounded once to float32.
        return float32_rounding(singles, 1)
    raise AssertionError(f"{method}: state here what bounds a batch against its rows")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("method", "model_name"), PAIRS)
def test_a_batch_with_per_row_targets_equals_single_image_calls(
    method: str, model_name: str, device: str
) -> None:
    contract = MODELS[model_name]
    model = contract.build()
    assert METHODS[method].supports(model) is applies(method, model_name), (
        f"{method} needs {sorted(METHODS[method].params_model.needs)}; "
        f"{model_name} offers {sorted(contract.offers)}"
    )
    if not applies(method, model_name):
        return
    model = model.to(device)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(2, contract.channels, SIZE, SIZE, generator=generator).double()
    params = params_of(method, contract.cam_layer)
    # The same image twice for two classes, then another image: classes whose maps have content
    # (a random model's CAM of some class can be zero everywhere, which would compare as empty).
    first = classes_with_content(method, model, images[0].to(device), params, contract.cam_layer)
    second = classes_with_content(method, model, images[1].to(device), params, contract.cam_layer)
    assert len(first) >= 2 and second, f"too few classes with a map: {first}, {second}"
    inputs = torch.stack([images[0], images[0], images[1]]).to(device)
    targets = torch.tensor([first[0], first[1], second[-1]], device=device)
    recorder = LogitRecorder()

    with recorder.recording(model):
        batch = explain(method, model, inputs, targets, params, cam_layer=contract.cam_layer)
        rows = [
            explain(
                method,
                model,
                inputs[i : i + 1],
                targets[i : i + 1],
                params,
                cam_layer=contract.cam_layer,
            )
            for i in range(3)
        ]

    singles = torch.cat([row.values for row in rows]).cpu()
    assert batch.values.shape == (3, SIZE, SIZE)
    assert batch.values.dtype == torch.float32
    assert batch.values.device.type == device
    assert bool(batch.values.isfinite().all())
    assert batch.signed is params.is_signed()
    assert all(row.signed is params.is_signed() for row in rows)
    if not batch.signed:
        assert bool((batch.values >= 0).all()), "an unsigned map has a negative value"
    assert set(batch.checks) == set(rows[0].checks)
    layer = (params.layer if isinstance(params, LayerParams) else None) or contract.cam_layer
    bound = batch_bound(
        params,
        singles,
        recorder.largest_logit,
        lambda: layer_magnitude(model, layer, inputs),
        contract.classes,
    )
    assert max_relative_deviation(batch.values.cpu(), singles) <= bound
    if params.class_specific:
        # The targets count: the same image explained for another class gives another map.
        assert not torch.allclose(batch.values[0], batch.values[1])
    else:
        # One map for the image, whichever class its row names.
        assert torch.equal(batch.values[0], batch.values[1])
    if isinstance(METHODS[method], ForwardOnlyMethod):
        # Each distinct image is explained on its own, for its rows' targets: the image that
        # appears once runs the very same arithmetic as its single call, to the bit.
        torch.testing.assert_close(batch.values[2].cpu(), singles[2], rtol=0, atol=0)


@contextmanager
def parameters_watched(model: nn.Module) -> Iterator[list[str]]:
    """While open, every forward call of each module of `model` records the name of each of its
    own parameters that requires grad or holds one.

    Autograd reaches a parameter only through a forward pass run while it requires grad, so an
    empty record means no graph held a parameter during the call, whatever was undone after it.
    """
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    leaks: list[str] = []

    def check(module: nn.Module, _args: object) -> None:
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad or parameter.grad is not None:
                leaks.append(names.get(id(parameter), "?"))

    handles = [module.register_forward_pre_hook(check) for module in model.modules()]
    try:
        yield leaks
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize(("method", "model_name"), PAIRS)
def test_leaves_the_model_and_the_inputs_untouched(method: str, model_name: str) -> None:
    contract = MODELS[model_name]
    if not applies(method, model_name):
        assert not METHODS[method].supports(contract.build())
        return
    model = contract.build()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    modules = [
        (name, type(module), vars(module).get("inplace")) for name, module in model.named_modules()
    ]
    inputs = torch.randn(2, contract.channels, SIZE, SIZE).double()
    before = inputs.clone()

    with parameters_watched(model) as leaks:
        explain(
            method,
            model,
            inputs,
            torch.tensor([0, 1]),
            CHEAP.get(method, {}),
            cam_layer=contract.cam_layer,
        )

    assert not leaks, f"parameters took part in autograd: {sorted(set(leaks))}"
    assert_untouched(model, frozen=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    # No module swapped for another (a guided ReLU, say) or made in-place or not.
    assert [
        (name, type(module), vars(module).get("inplace")) for name, module in model.named_modules()
    ] == modules
    assert torch.equal(inputs, before)
    assert not inputs.requires_grad
    assert inputs.grad is None


class TidyParameterGradient(AttributionMethod[SaliencyParams]):
    """A bad method: it takes the gradient with respect to the parameters too, then undoes every
    trace of it, so that nothing is left for `assert_untouched` to see."""

    @override
    def attribute(self, batch: Batch, params: SaliencyParams) -> AttributionMap:
        parameters = list(batch.model.parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        try:
            leaf = batch.inputs.detach().requires_grad_(True)
            with torch.enable_grad():
                score = target_score(batch.model(leaf), batch.targets)
                gradient, *_ = torch.autograd.grad(score, [leaf, *parameters])
        finally:
            for parameter in parameters:
                parameter.requires_grad_(False)
        return AttributionMap(gradient.abs().amax(dim=1).float(), signed=False)


def test_the_parameter_watch_catches_a_method_that_tidies_up_after_itself() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, SIZE, SIZE).double()
    batch = Batch(model=model, inputs=inputs, targets=torch.tensor([0, 1]), forward=model)

    with parameters_watched(model) as leaks:
        TidyParameterGradient().attribute(batch, SaliencyParams())

    # What the method left behind passes the after-the-fact check; the watch saw it during.
    assert_untouched(model, frozen=True)
    assert set(leaks) == {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_some_contract_model(method: str) -> None:
    assert any(applies(method, model) for model in MODELS), METHODS[method].params_model.needs


TWIN_LABELS = [f"class {index}" for index in range(5)]


@pytest.fixture(scope="module")
def onnx_twin(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, LoadedModel]:
    """`small_cnn` in float32, and its ONNX export (BatchNorm kept as its own node, nothing
    folded) loaded from a model repository as the worker loads it: the onnx2torch conversion for
    gradients, ONNX Runtime for forward passes."""
    model = small_cnn().float()
    version = tmp_path_factory.mktemp("repository") / "small-cnn-onnx" / "1"
    version.mkdir(parents=True)
    manifest: Mapping[str, object] = {
        "id": "small-cnn-onnx",
        "version": "1",
        "format": "onnx",
        "labels": TWIN_LABELS,
        "input": {
            "channels": 3,
            "height": SIZE,
            "width": SIZE,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
        },
    }
    (version / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(version / "model.onnx"),
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    loaded = load_model(version, torch.device("cpu"))
    assert loaded.onnx_session is not None
    return model, loaded


# Both sides run in float32, as served. The twin's module runs torch's own kernels on the same
# float32 weights in the same order (no BatchNorm folded), so gradient maps agree to a few
# roundings; ONNX Runtime sums each dot product in its own order, ≲ eps32 · √(layers · fan-in)
# ≈ 1.2e-7 · √(4 · 144) ≈ 3e-6 of the logits, which the forward-only maps inherit: 1e-4 of the
# map's range covers both with room, and a wrong layer or target moves a map by tens of percent.
TWIN_TOLERANCE = 1e-4


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_onnx_twin_gives_the_same_map(
    method: str, onnx_twin: tuple[nn.Module, LoadedModel]
) -> None:
    model, twin = onnx_twin
    assert METHODS[method].supports(twin.module), f"{method} does not run on the ONNX twin"
    example = torch.zeros(1, 3, SIZE, SIZE)
    torch_layer = list(find_cam_layers(model, example))[-1]
    assert torch_layer == MODELS["small_cnn"].cam_layer
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        targets = model(inputs).argmax(dim=1)
    params = dict(CHEAP.get(method, {}))

    native = explain(method, model, inputs, targets, params, cam_layer=torch_layer)
    from_onnx = explain(
        method,
        twin.module,
        inputs,
        targets,
        params,
        cam_layer=twin.default_cam_layer,
        forward=twin.forward_logits,
    )

    assert from_onnx.signed is native.signed
    assert max_relative_deviation(from_onnx.values, native.values) < TWIN_TOLERANCE
    assert_untouched(twin.module, frozen=True)
