"""The model repository: discovery, safetensors and ONNX loading, CAM layers, load errors."""

import hashlib
import importlib
import json
import re
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnx2torch
import onnxruntime
import pytest
import safetensors.torch
import torch
import torchvision
from method_checks import EPS32
from onnx import TensorProto, helper, numpy_helper
from torch.nn import functional as F

from schemas.models import InputSpec
from workers import onnx_models
from workers.repository import (
    LoadedModel,
    ModelLoadError,
    choose_device,
    discover,
    find_cam_layers,
    load_model,
    load_repository,
)

CPU = torch.device("cpu")
LABELS = ["benign", "malignant", "artefact"]
TINY_INPUT = InputSpec(channels=1, height=16, width=16, mean=[0.5], std=[0.25])
TINY_CAM_LAYERS = [
    "features.0",
    "features.1",
    "features.2",
    "features.3",
    "features.4",
    "features",
]
RESNET_INPUT = InputSpec(
    channels=3, height=64, width=64, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
)


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The test factories, importable as `tiny_models` the way a manifest names them."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("tiny_models")


@pytest.fixture
def tiny_cnn(tiny_models: ModuleType) -> torch.nn.Module:
    """A tiny CNN with calibrated BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    return calibrated(tiny_models.build_tiny_cnn(), torch.randn(8, 1, 16, 16))


def calibrated(net: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """`net` in eval mode after BatchNorm has seen `images`, so it is not the identity."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(images)
    return net.eval()


def write_manifest(version_dir: Path, **overrides: object) -> Path:
    """A manifest for the tiny CNN as safetensors, with fields replaced by `overrides`."""
    manifest = {
        "id": version_dir.parent.name,
        "version": version_dir.name,
        "format": "safetensors",
        "architecture": {"factory": "tiny_models:build_tiny_cnn", "kwargs": {"classes": 3}},
        "labels": LABELS,
        "input": TINY_INPUT.model_dump(),
        **overrides,
    }
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    return version_dir


def save_safetensors(net: torch.nn.Module, version_dir: Path, **overrides: object) -> Path:
    write_manifest(version_dir, **overrides)
    safetensors.torch.save_file(net.state_dict(), version_dir / "model.safetensors")
    return version_dir


def save_onnx(
    net: torch.nn.Module,
    version_dir: Path,
    input_spec: InputSpec,
    dynamic_batch: bool = True,
    **overrides: object,
) -> Path:
    manifest_input = input_spec.model_dump()
    write_manifest(version_dir, format="onnx", architecture=None, input=manifest_input, **overrides)
    example = torch.zeros(1, input_spec.channels, input_spec.height, input_spec.width)
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, and it is the one that writes Identity nodes.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (example,),
            version_dir / "model.onnx",
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return version_dir


def input_gradients(net: torch.nn.Module, images: torch.Tensor, label: int) -> torch.Tensor:
    images = images.clone().requires_grad_(True)
    net(images)[:, label].sum().backward()
    assert images.grad is not None
    return images.grad


def tiny_magnitudes(
    net: torch.nn.Module, images: torch.Tensor, label: int
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """For the tiny CNN, what its rounding scales with: the same network with |weights|, |biases|
    and |x|, BatchNorm folded into the first convolution and every ReLU the identity.

    (the magnitude summed into each ReLU's input, into each logit, and the input gradient of
    `label`'s logit through it, Σ over paths of Π |w|). A relative change of δ in every
    weight and every sum moves each of these values by ≲ δ times its magnitude here.
    """
    conv1, norm, _, conv2, _ = net.features
    with torch.no_grad():
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).abs()
        shift = (conv1.bias * scale).abs() + (norm.running_mean * scale).abs() + norm.bias.abs()
    weight1 = (conv1.weight * scale[:, None, None, None]).abs()
    leaf = images.abs().detach().requires_grad_(True)
    first = F.conv2d(leaf, weight1, shift, padding=1)
    second = F.conv2d(first, conv2.weight.abs(), conv2.bias.abs(), stride=2, padding=1)
    logits = F.linear(second.mean(dim=(2, 3)), net.head.weight.abs(), net.head.bias.abs())
    (gradient,) = torch.autograd.grad(logits[:, label].sum(), leaf)
    return [first.detach(), second.detach()], logits.detach(), gradient


def relu_inputs(net: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """What each ReLU of `net` receives for `images`, in forward order."""
    seen: list[torch.Tensor] = []
    relus = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    handles = [r.register_forward_pre_hook(lambda _, a: seen.append(a[0].detach())) for r in relus]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def largest_activation(net: torch.nn.Module, images: torch.Tensor) -> float:
    """The largest |value| any module of `net` outputs for `images`."""
    largest = [0.0]

    def record(_module: torch.nn.Module, _args: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            largest[0] = max(largest[0], float(output.abs().max()))

    handles = [module.register_forward_hook(record) for module in net.modules()]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for handle in handles:
            handle.remove()
    return largest[0]


def folded_weight_bound(net: torch.nn.Module, images: torch.Tensor) -> float:
    """How far, in float64, a copy of `net` whose BatchNorms were folded into its convolutions in
    float32 (as the ONNX exporter does) can drift from `net`: each folded weight and bias is a
    few float32 roundings (σ, the scale, the product, the stored value: ≤ 4 eps32) off, a
    relative change that each of the network's layers passes on in proportion to the largest
    activation; twice that for the sums that follow to spare."""
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in net.modules())
    return 2 * layers * 4 * EPS32 * largest_activation(net, images)


def identity_fed_conv_inputs(model: onnx.ModelProto) -> set[str]:
    """Conv inputs that an Identity node over an initializer produces."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    identity_outputs = {
        node.output[0]
        for node in model.graph.node
        if node.op_type == "Identity" and node.input[0] in initializers
    }
    conv_inputs = {
        name for node in model.graph.node if node.op_type == "Conv" for name in node.input
    }
    return identity_outputs & conv_inputs


def test_safetensors_model_serves_the_saved_weights(
    tiny_cnn: torch.nn.Module, tmp_path: Path
) -> None:
    version_dir = save_safetensors(tiny_cnn, tmp_path / "tiny" / "1")

    model = load_model(version_dir, CPU)

    images = torch.randn(2, 1, 16, 16)
    # The same network with the same weights: the same arithmetic, equal to the bit.
    torch.testing.assert_close(model.forward_logits(images), tiny_cnn(images), rtol=0, atol=0)
    assert model.onnx_session is None
    assert model.device == CPU
    assert not model.module.training
    assert not any(parameter.requires_grad for parameter in model.module.parameters())
    weights = (version_dir / "model.safetensors").read_bytes()
    assert model.sha256 == hashlib.sha256(weights).hexdigest()


def test_cam_layers_are_spatial_outputs_in_forward_order(
    tiny_cnn: torch.nn.Module, tmp_path: Path
) -> None:
    model = load_model(save_safetensors(tiny_cnn, tmp_path / "tiny" / "1"), CPU)

    assert model.cam_layers == TINY_CAM_LAYERS
    assert model.default_cam_layer == "features"


def test_cam_layers_count_a_reused_module_at_its_last_call() -> None:
    class Reused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
            self.relu = torch.nn.ReLU()

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.relu(self.conv(self.relu(images)))

    assert list(find_cam_layers(Reused(), torch.zeros(1, 1, 8, 8))) == ["conv", "relu"]


def test_manifest_cam_layer_is_the_default(tiny_cnn: torch.nn.Module, tmp_path: Path) -> None:
    version_dir = save_safetensors(tiny_cnn, tmp_path / "tiny" / "1", cam_layer="features.2")

    assert load_model(version_dir, CPU).default_cam_layer == "features.2"


def test_info_describes_the_model(tiny_cnn: torch.nn.Module, tmp_path: Path) -> None:
    model = load_model(save_safetensors(tiny_cnn, tmp_path / "tiny" / "1"), CPU)

    info = model.info(["gradcam", "saliency"])

    assert (info.id, info.version, info.format) == ("tiny", "1", "safetensors")
    assert info.labels == LABELS
    assert info.input.channels == 1
    assert info.cam_layers == TINY_CAM_LAYERS[::-1]
    assert info.default_cam_layer == "features"
    assert info.methods == ["gradcam", "saliency"]
    assert info.sha256 == model.sha256
    assert info.live_workers == 0


def test_onnx_model_runs_on_onnx_runtime_with_faithful_gradients(
    tiny_cnn: torch.nn.Module, tmp_path: Path
) -> None:
    version_dir = save_onnx(tiny_cnn, tmp_path / "tiny" / "1", TINY_INPUT)

    model = load_model(version_dir, CPU)

    images = torch.randn(2, 1, 16, 16)
    assert model.onnx_session is not None
    (session_logits,) = model.onnx_session.run(None, {"image": images.numpy()})
    logits = model.forward_logits(images)
    # The same session on the same input: the same arithmetic, equal to the bit.
    torch.testing.assert_close(logits, torch.from_numpy(session_logits), rtol=0, atol=0)
    # ONNX Runtime runs float32, as served. Each side rounds the folded BatchNorm (≲ 4 eps32)
    # and every sum of the layers after it (fan-in + 1 each: 9, 36, the mean over 64, 8), which
    # the layers pass on at most as |weights| do: 2 × (4 + 10 + 37 + 65 + 9) eps32 of the
    # magnitude of each logit. ReLUs are 1-Lipschitz, so a ReLU on its kink moves nothing more.
    _, logit_magnitude, _ = tiny_magnitudes(tiny_cnn, images, label=1)
    deviation = (logits - tiny_cnn(images)).abs()
    assert bool((deviation <= 2 * (4 + 10 + 37 + 65 + 9) * EPS32 * logit_magnitude).all())
    # Gradients in float64, where the converted network differs from the original only by its
    # BatchNorm folded into the first convolution's float32 weights (≲ 4 eps32 each, twice to
    # spare): the gradient moves by that relative to Σ over paths of Π |w|, provided that no
    # ReLU's input is within that rounding of its kink, where the gradient jumps.
    original_net, converted_net = tiny_cnn.double(), model.module.double()
    wide = images.double()
    relu_magnitudes, _, gradient_magnitude = tiny_magnitudes(original_net, wide, label=1)
    for pre, magnitude in zip(relu_inputs(original_net, wide), relu_magnitudes, strict=True):
        assert bool((pre.abs() > 8 * EPS32 * magnitude).all()), "a ReLU input near its kink"
    converted = input_gradients(converted_net, wide, label=1)
    original = input_gradients(original_net, wide, label=1)
    assert torch.isfinite(converted).all()
    assert bool(((converted - original).abs() <= 8 * EPS32 * gradient_magnitude).all())
    assert float(original.abs().max()) > 1e3 * 8 * EPS32 * float(gradient_magnitude.max())
    assert not any(parameter.requires_grad for parameter in model.module.parameters())
    assert model.default_cam_layer == model.cam_layers[-1]
    assert any("Conv" in name for name in model.cam_layers)
    assert any("Relu" in name for name in model.cam_layers)
    weights = (version_dir / "model.onnx").read_bytes()
    assert model.sha256 == hashlib.sha256(weights).hexdigest()


def test_resnet18_onnx_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = calibrated(torchvision.models.resnet18(weights=None), torch.randn(4, 3, 64, 64))
    version_dir = save_onnx(
        resnet, tmp_path / "resnet" / "1", RESNET_INPUT, labels=[str(i) for i in range(1000)]
    )

    model = load_model(version_dir, CPU)

    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    # In float64, where only the float32 rounding of the exporter's folded weights separates
    # the two (`folded_weight_bound`) and no float32 sum over thousands of terms.
    resnet, converted = resnet.double(), model.module.double()
    with torch.no_grad():
        gap = float((converted(images) - resnet(images)).abs().max())
    assert gap <= folded_weight_bound(resnet, images)
    assert model.default_cam_layer == model.cam_layers[-1]
    assert "layer4" in model.default_cam_layer


def test_resnet18_with_fresh_batchnorm_loads_through_identity_folding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    # Fresh BatchNorm folds into equal Conv biases that the exporter shares through Identity nodes.
    version_dir = save_onnx(
        resnet, tmp_path / "resnet" / "1", RESNET_INPUT, labels=[str(i) for i in range(1000)]
    )
    raw = onnx.load(version_dir / "model.onnx")
    assert identity_fed_conv_inputs(raw)
    with pytest.raises(KeyError):
        onnx2torch.convert(raw)

    model = load_model(version_dir, CPU)

    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    # In float64, as above: only the float32 folded weights separate the two.
    resnet, converted = resnet.double(), model.module.double()
    with torch.no_grad():
        gap = float((converted(images) - resnet(images)).abs().max())
    assert gap <= folded_weight_bound(resnet, images)


def test_fold_identity_initializers_turns_identities_over_initializers_into_initializers() -> None:
    weight = np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["W"], ["W_copy"]),
            helper.make_node("Identity", ["W_copy"], ["W_copy_copy"]),
            helper.make_node("Identity", ["X"], ["X_copy"]),
            helper.make_node("Conv", ["X_copy", "W_copy_copy"], ["Y"], pads=[1, 1, 1, 1]),
        ],
        "identity_over_initializer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2, 5, 5])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(model.SerializeToString())
    folded = onnx.ModelProto()
    folded.CopyFrom(model)

    assert onnx_models.fold_identity_initializers(folded) == 2

    assert [node.op_type for node in folded.graph.node] == ["Identity", "Conv"]
    folded_weight = {t.name: t for t in folded.graph.initializer}["W_copy_copy"]
    np.testing.assert_array_equal(numpy_helper.to_array(folded_weight), weight)
    images = torch.randn(1, 1, 5, 5)
    (expected,) = session.run(None, {"X": images.numpy()})
    # One float32 convolution each side, ONNX Runtime's and torch's: 9 products and their sum,
    # ≲ 10 eps32 of Σ |w x| per output on each side.
    magnitude = F.conv2d(images.abs(), torch.from_numpy(weight).abs(), padding=1)
    deviation = (onnx2torch.convert(folded)(images) - torch.from_numpy(expected)).abs()
    assert bool((deviation <= 2 * 10 * EPS32 * magnitude).all())


def test_discover_serves_the_highest_version_of_each_model(tmp_path: Path) -> None:
    for version in ["1", "2", "10"]:
        write_manifest(tmp_path / "alpha" / version)
    (tmp_path / "alpha" / "11").mkdir()
    for version in ["1.9", "1.10"]:
        write_manifest(tmp_path / "beta" / version)
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.md").write_text("not a model")

    assert discover(tmp_path) == [tmp_path / "alpha" / "10", tmp_path / "beta" / "1.10"]


def test_load_repository_loads_every_model_by_id(tiny_cnn: torch.nn.Module, tmp_path: Path) -> None:
    save_safetensors(tiny_cnn, tmp_path / "tiny" / "1")
    save_safetensors(tiny_cnn, tmp_path / "tiny" / "2", description="newer")
    save_onnx(tiny_cnn, tmp_path / "tiny-onnx" / "1", TINY_INPUT)

    models, failures = load_repository(tmp_path, CPU)

    assert sorted(models) == ["tiny", "tiny-onnx"]
    assert all(isinstance(model, LoadedModel) for model in models.values())
    assert models["tiny"].manifest.description == "newer"
    assert models["tiny-onnx"].onnx_session is not None
    assert failures == []


def test_load_repository_reports_broken_folders_and_serves_the_others(
    tiny_cnn: torch.nn.Module, tmp_path: Path
) -> None:
    save_safetensors(tiny_cnn, tmp_path / "good" / "1")
    fixed_batch = save_onnx(
        tiny_cnn, tmp_path / "a-fixed-batch" / "1", TINY_INPUT, dynamic_batch=False
    )
    misspelt = save_safetensors(tiny_cnn, tmp_path / "b-misspelt-layer" / "1", cam_layer="featurs")
    unimportable = save_safetensors(
        tiny_cnn,
        tmp_path / "c-unimportable" / "2",
        architecture={"factory": "tiny_modles:build_tiny_cnn", "kwargs": {}},
    )
    missing_weights = write_manifest(tmp_path / "d-no-weights" / "1")

    models, failures = load_repository(tmp_path, CPU)

    assert sorted(models) == ["good"]
    assert [(f.folder, f.model_id, f.version) for f in failures] == [
        (fixed_batch, "a-fixed-batch", "1"),
        (misspelt, "b-misspelt-layer", "1"),
        (unimportable, "c-unimportable", "2"),
        (missing_weights, "d-no-weights", "1"),
    ]
    problems = [failure.problem for failure in failures]
    assert problems[0].startswith(
        "model.onnx does not run on a batch of 2 at the manifest's input size "
        "(is its batch axis dynamic?): "
    )
    assert "\n" not in problems[0], "ONNX Runtime's message is on one line"
    assert problems[1].startswith(
        "cam_layer 'featurs' is not a layer with a spatial output; did you mean 'features'? "
    )
    assert problems[2].startswith("factory 'tiny_modles:build_tiny_cnn' cannot be imported")
    assert "No module named 'tiny_modles'" in problems[2]
    assert problems[3] == "format is 'safetensors' but model.safetensors is missing"


def test_load_repository_reports_an_unexpected_load_error_as_a_failure(
    tiny_models: ModuleType, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    net = tiny_models.build_pair_net()
    version_dir = save_safetensors(
        net, tmp_path / "pair" / "1", architecture={"factory": "tiny_models:build_pair_net"}
    )

    models, failures = load_repository(tmp_path, CPU)

    assert models == {}
    assert [failure.folder for failure in failures] == [version_dir]
    assert failures[0].problem.startswith("it cannot be loaded: AttributeError(")


def test_load_repository_of_only_broken_folders_serves_nothing(tmp_path: Path) -> None:
    write_manifest(tmp_path / "broken" / "1")

    models, failures = load_repository(tmp_path, CPU)

    assert models == {}
    assert [failure.model_id for failure in failures] == ["broken"]


def test_missing_repository_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory"):
        discover(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"labels": []}, "manifest.json is not a valid manifest"),
        ({"id": "other"}, "manifest id 'other' does not match the folder 'tiny'"),
        ({"version": "2"}, "manifest version '2' does not match the folder '1'"),
        ({"architecture": None}, "needs an architecture factory"),
        ({"architecture": {"factory": "no_such_module:build"}}, "cannot be imported"),
        ({"architecture": {"factory": "tiny_models:build_nothing"}}, "cannot be imported"),
        ({"architecture": {"factory": "tiny_models.build_tiny_cnn"}}, "is not `module:callable`"),
        ({"architecture": {"factory": "tiny_models:build_not_a_module"}}, "not a Module"),
        (
            {"architecture": {"factory": "tiny_models:build_tiny_cnn", "kwargs": {"depth": 3}}},
            "failed with {'depth': 3}",
        ),
        (
            {"architecture": {"factory": "tiny_models:build_tiny_cnn", "kwargs": {"width": 8}}},
            "model.safetensors does not fit the factory's network",
        ),
        (
            {"input": TINY_INPUT.model_copy(update={"channels": 3}).model_dump()},
            "the network does not run on an image of shape (1, 3, 16, 16)",
        ),
        ({"labels": ["benign", "malignant"]}, "the manifest lists 2 labels"),
        ({"cam_layer": "features.9"}, "cam_layer 'features.9' is not a layer"),
        ({"cam_layer": "pool"}, "cam_layer 'pool' is not a layer"),
    ],
    ids=[
        "schema",
        "id",
        "version",
        "no-architecture",
        "no-module",
        "no-factory",
        "factory-format",
        "factory-result",
        "factory-kwargs",
        "state-dict",
        "input-channels",
        "label-count",
        "unknown-cam-layer",
        "cam-layer-1x1",
    ],
)
def test_invalid_safetensors_model_raises(
    tiny_cnn: torch.nn.Module, tmp_path: Path, overrides: dict[str, object], problem: str
) -> None:
    version_dir = save_safetensors(tiny_cnn, tmp_path / "tiny" / "1", **overrides)

    with pytest.raises(ModelLoadError, match=re.escape(problem)) as caught:
        load_model(version_dir, CPU)
    assert caught.value.folder == version_dir
    assert str(version_dir) in str(caught.value)


def test_missing_manifest_raises(tiny_cnn: torch.nn.Module, tmp_path: Path) -> None:
    version_dir = tmp_path / "tiny" / "1"
    version_dir.mkdir(parents=True)
    safetensors.torch.save_file(tiny_cnn.state_dict(), version_dir / "model.safetensors")

    with pytest.raises(ModelLoadError, match="manifest.json is missing"):
        load_model(version_dir, CPU)


def test_manifest_that_is_not_json_raises(tmp_path: Path) -> None:
    version_dir = tmp_path / "tiny" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "manifest.json").write_text("{not json")

    with pytest.raises(ModelLoadError, match="manifest.json is not a valid manifest"):
        load_model(version_dir, CPU)


@pytest.mark.parametrize(
    ("model_format", "weights"), [("safetensors", "model.safetensors"), ("onnx", "model.onnx")]
)
def test_missing_weights_raise(tmp_path: Path, model_format: str, weights: str) -> None:
    version_dir = write_manifest(tmp_path / "tiny" / "1", format=model_format)

    with pytest.raises(
        ModelLoadError, match=f"format is '{model_format}' but {weights} is missing"
    ):
        load_model(version_dir, CPU)


def test_onnx_file_that_is_not_onnx_raises(tmp_path: Path) -> None:
    version_dir = write_manifest(tmp_path / "tiny" / "1", format="onnx", architecture=None)
    (version_dir / "model.onnx").write_bytes(b"\x00not an onnx model")

    with pytest.raises(ModelLoadError, match="model.onnx cannot be loaded"):
        load_model(version_dir, CPU)


def test_onnx_with_a_fixed_batch_size_raises(tiny_cnn: torch.nn.Module, tmp_path: Path) -> None:
    version_dir = save_onnx(tiny_cnn, tmp_path / "tiny" / "1", TINY_INPUT, dynamic_batch=False)

    with pytest.raises(ModelLoadError, match="does not run on a batch of 2"):
        load_model(version_dir, CPU)


def test_onnx_conversion_that_disagrees_with_onnx_runtime_raises(
    tiny_cnn: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version_dir = save_onnx(tiny_cnn, tmp_path / "tiny" / "1", TINY_INPUT)
    convert = onnx_models.convert_to_torch

    def unfaithful_convert(model: onnx.ModelProto) -> torch.nn.Module:
        module = convert(model)
        with torch.no_grad():
            next(module.parameters()).add_(0.01)
        return module

    monkeypatch.setattr(onnx_models, "convert_to_torch", unfaithful_convert)

    with pytest.raises(ModelLoadError, match="disagrees with ONNX Runtime"):
        load_model(version_dir, CPU)


def test_choose_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device().type == expected
    assert choose_device("cpu") == CPU
    with pytest.raises(ValueError, match="unknown device"):
        choose_device("abacus")


def test_choose_device_refuses_cuda_only_where_it_is_missing() -> None:
    if torch.cuda.is_available():
        assert choose_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("cuda")
