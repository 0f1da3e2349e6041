"""The canonical form: the same function, one module per ReLU, addition and concatenation."""

import copy
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torchvision.models import densenet121, resnet18, resnet50

from workers.methods import available_methods
from workers.methods.canonical import (
    Concat,
    Sum,
    activation_nodes,
    canonical_form,
    has_canonical_form,
    rewritten_form,
)
from workers.onnx_models import convert_to_torch
from workers.repository import load_model

ROOT = Path(__file__).resolve().parents[2]
EPS64 = torch.finfo(torch.float64).eps


def assert_same_function(canonical: nn.Module, model: nn.Module, inputs: torch.Tensor) -> None:
    """`canonical` computes what `model` computes, in float64, up to the order of its sums.

    The rewrite swaps the modules and functions that apply ReLUs, additions and concatenations,
    which round nothing or exactly as before; all a backend could change is the order of each
    layer's sums, ≲ fan-in · eps64 of the largest activation per layer, summed over the layers.
    A ReLU, addition or concatenation lost or misplaced moves the logits by O(1) of that.
    """
    assert inputs.dtype == torch.float64
    largest = [0.0]

    def record(_module: nn.Module, _args: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            largest[0] = max(largest[0], float(output.abs().max()))

    handles = [module.register_forward_hook(record) for module in model.modules()]
    try:
        with torch.no_grad():
            reference = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    fan_ins = sum(
        module.weight[0].numel()
        for module in model.modules()
        if isinstance(getattr(module, "weight", None), torch.Tensor)
    )
    with torch.no_grad():
        actual = canonical(inputs)
    assert actual.dtype == torch.float64
    bound = 2 * (fan_ins + 1) * EPS64 * largest[0]
    assert float((actual - reference).abs().max()) <= bound, bound


class CountedCalls(TorchFunctionMode):
    """Counts the ReLU applications, tensor additions and concatenations of a forward pass, as
    torch sees them: whatever module, function or method the model used to ask for them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        tensors = [arg for arg in args if isinstance(arg, torch.Tensor)]
        if name in ("relu", "relu_"):
            self.calls["relu"] += 1
        elif name in ("add", "add_", "__add__", "__iadd__", "__radd__") and len(tensors) == 2:
            self.calls["add"] += 1
        elif name in ("cat", "concat", "concatenate"):
            self.calls["cat"] += 1
        return func(*args, **(kwargs or {}))


def counted_calls(model: nn.Module, inputs: torch.Tensor) -> Counter[str]:
    with torch.no_grad(), CountedCalls() as counter:
        model(inputs)
    return counter.calls


def canonical_counts(graph_module: fx.GraphModule) -> Counter[str]:
    kinds = {nn.ReLU: "relu", Sum: "add", Concat: "cat"}
    counts: Counter[str] = Counter()
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            kind = kinds.get(type(graph_module.get_submodule(node.target)))
            if kind:
                counts[kind] += 1
    return counts


class FunctionalReluNet(nn.Module):
    """ReLUs as F.relu, torch.relu and Tensor.relu_, a residual `+=` and a torch.cat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv1(x), inplace=True)
        b = self.conv2(a)
        b += a
        b = torch.relu(b)
        c = torch.cat([a, b], dim=1)
        c.relu_()
        return self.head(F.adaptive_avg_pool2d(c, 1).flatten(1))


class ReusedReluNet(nn.Module):
    """One in-place nn.ReLU called three times, and an in-place `add_` whose input is read again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        self.relu(y)  # in place: y is now relu(conv1(x))
        z = self.conv2(y)
        z.add_(y)
        z = self.relu(z)
        return self.head(self.relu(z - 0.5).mean(dim=(2, 3)))


Model = TypeVar("Model", bound=nn.Module)


def frozen(model: Model) -> Model:
    return model.eval().requires_grad_(False)


def torchvision_model(factory: Callable[..., nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return frozen(factory(weights=None))


def demo_model() -> nn.Module:
    return load_model(ROOT / "models/demo-lesions/1", torch.device("cpu")).module


def onnx_model(model: nn.Module, size: int) -> nn.Module:
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        path = Path(folder) / "model.onnx"
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
        return frozen(convert_to_torch(onnx.load(path)))


# Built once per test run: the tests only read them.
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "demo": (cache(demo_model), (2, 1, 32, 32)),
    "resnet18": (cache(lambda: torchvision_model(resnet18)), (2, 3, 32, 32)),
    "resnet50": (cache(lambda: torchvision_model(resnet50)), (1, 3, 32, 32)),
    "densenet121": (cache(lambda: torchvision_model(densenet121)), (1, 3, 32, 32)),
    "functional_relu": (cache(lambda: frozen(FunctionalReluNet())), (2, 3, 16, 16)),
    "reused_relu": (cache(lambda: frozen(ReusedReluNet())), (2, 3, 16, 16)),
    "onnx_resnet18": (cache(lambda: onnx_model(torchvision_model(resnet18), 32)), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_computes_the_same_logits_with_one_module_per_relu_add_and_cat(name: str) -> None:
    build, shape = MODELS[name]
    model = build()
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = counted_calls(model, inputs)

    canonical = canonical_form(model)

    # In float64: a copy, whose canonical form is built for it.
    wide = copy.deepcopy(model).double()
    assert_same_function(canonical_form(wide), wide, inputs.double())
    assert expected["relu"] > 0
    assert canonical_counts(canonical) == expected
    # Nothing else in the graph computes a ReLU, an addition or a concatenation any more.
    assert counted_calls(canonical, inputs) == expected


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "reused_relu", "onnx_resnet18"])
def test_every_relu_call_is_its_own_plain_module(name: str) -> None:
    model = MODELS[name][0]()

    canonical = canonical_form(model)

    names = activation_nodes(canonical)
    modules = [canonical.get_submodule(relu) for relu in names]
    assert len(set(names)) == len(names)
    assert len({id(module) for module in modules}) == len(modules)
    assert all(type(module) is nn.ReLU and not module.inplace for module in modules)
    calls = Counter(node.target for node in canonical.graph.nodes if node.op == "call_module")
    assert all(calls[relu] == 1 for relu in names)


def test_a_reused_relu_keeps_its_name_at_the_first_call() -> None:
    canonical = canonical_form(MODELS["resnet18"][0]())

    names = activation_nodes(canonical)

    assert names[:3] == ["relu", "layer1.0.relu", "layer1.0.relu_1"]
    assert names[-1] == "layer4.1.relu_1"


def test_maps_onnx2torch_add_and_concat_modules() -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.conv1(x))
            b = torch.relu(self.conv2(a) + a)
            return self.head(torch.cat([a, b], dim=1).mean(dim=(2, 3)))

    torch.manual_seed(1)
    model = onnx_model(frozen(Branches()), 8).double()
    inputs = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    canonical = canonical_form(model)

    assert canonical_counts(canonical) == Counter({"relu": 2, "add": 1, "cat": 1})
    concat = next(m for m in canonical.modules() if isinstance(m, Concat))
    assert concat.dim == 1
    assert_same_function(canonical, model, inputs)


def test_leaves_the_model_unchanged_and_shares_its_parameters() -> None:
    model = frozen(ReusedReluNet())
    modules_before = dict(model.named_modules())
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    inputs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(inputs)

    canonical = canonical_form(model)
    with torch.no_grad():
        canonical(inputs)

    assert dict(model.named_modules()) == modules_before
    assert model.relu.inplace
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    parameters = {id(parameter) for parameter in model.parameters()}
    assert {id(parameter) for parameter in canonical.parameters()} <= parameters
    assert not any(parameter.requires_grad for parameter in canonical.parameters())
    with torch.no_grad():
        assert torch.equal(model(inputs), logits)


def test_is_cached_per_model_and_rebuilt_when_the_model_moves() -> None:
    model = frozen(FunctionalReluNet())
    first = canonical_form(model)

    assert canonical_form(model) is first
    assert canonical_form(frozen(FunctionalReluNet())) is not first

    model.double()
    moved = canonical_form(model)
    assert moved is not first
    inputs = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert_same_function(moved, model, inputs)


def test_a_rewritten_form_swaps_modules_only_in_its_own_copy() -> None:
    model = MODELS["resnet18"][0]()
    canonical = canonical_form(model)
    relus = activation_nodes(canonical)

    def silence(_name: str, module: nn.Module) -> nn.Module | None:
        return nn.Identity() if isinstance(module, nn.ReLU) else None

    rewritten = rewritten_form(model, "identity", silence)

    assert rewritten_form(model, "identity", silence) is rewritten
    assert all(isinstance(rewritten.get_submodule(relu), nn.Identity) for relu in relus)
    assert activation_nodes(canonical) == relus
    assert all(isinstance(canonical.get_submodule(relu), nn.ReLU) for relu in relus)
    assert rewritten.get_submodule("conv1") is model.conv1


class DataDependentNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return self.head(pooled if pooled.sum() > 0 else -pooled)


def test_a_model_fx_cannot_trace_has_no_rule_methods() -> None:
    model = frozen(DataDependentNet())

    assert not has_canonical_form(model)
    assert has_canonical_form(frozen(FunctionalReluNet()))
    methods = set(available_methods(model))
    assert "saliency" in methods
    assert not methods & {"guided_backprop", "guided_gradcam", "deeplift"}
