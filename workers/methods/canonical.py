"""The canonical form of a model: one graph where every rule-based method finds the same pieces.

Methods that rewrite the backward pass (guided backprop, DeepLIFT, LRP) need each ReLU, each
residual addition and each concatenation to be a module of its own, called once. Models reach
them many ways: a ReLU module reused at several call sites (torchvision's ResNet), `F.relu`
(DenseNet), `out += identity`, `torch.cat`, or onnx2torch's operator modules. `canonical_form`
rewrites all of them, once per model, into distinct `nn.ReLU`, `Sum` and `Concat` modules of a
`torch.fx.GraphModule` that computes the same function. The original model is never modified:
the canonical form shares its layers and parameters and owns only the modules it adds.
"""

import inspect
import operator
import weakref
from collections.abc import Callable, Hashable, Iterable
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from onnx2torch.node_converters.concat import OnnxConcat
from torch import fx, nn


class Sum(nn.Module):
    """a + b: the addition of two computed tensors, such as a residual connection."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Concat(nn.Module):
    """torch.cat(tensors, dim) over tensors passed as separate arguments."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


_RELU_FUNCTIONS: frozenset[object] = frozenset({F.relu, F.relu_, torch.relu, torch.relu_})
_ADD_FUNCTIONS: frozenset[object] = frozenset({operator.add, operator.iadd, torch.add})
_CAT_FUNCTIONS: frozenset[object] = frozenset({torch.cat, torch.concat, torch.concatenate})
_INPLACE_FUNCTIONS: frozenset[object] = frozenset({F.relu_, torch.relu_, operator.iadd})

_Signature = tuple[tuple[torch.device, int], ...]
_Cached = tuple[_Signature, fx.GraphModule]
_canonical_cache: "weakref.WeakKeyDictionary[nn.Module, _Cached]" = weakref.WeakKeyDictionary()
_rewritten_cache: "weakref.WeakKeyDictionary[nn.Module, dict[Hashable, _Cached]]" = (
    weakref.WeakKeyDictionary()
)


def canonical_form(model: nn.Module) -> fx.GraphModule:
    """A GraphModule computing exactly what `model` computes, in canonical form:

    - every ReLU application (an `nn.ReLU`, reused or not; `F.relu`, `torch.relu`,
      `Tensor.relu` and their in-place variants) calls its own `nn.ReLU()`, not in-place;
    - every addition of two computed tensors (`+`, `+=`, `torch.add`, `Tensor.add`/`add_`, an
      onnx2torch Add) calls its own `Sum()`; additions of a constant or parameter stay as they are;
    - every concatenation (`torch.cat`, an onnx2torch Concat) calls its own `Concat(dim)`.

    Eager models are traced with `torch.fx.symbolic_trace`; GraphModules (onnx2torch conversions)
    are rewritten as they are. Cached per model, and rebuilt when the model's tensors move or are
    replaced. The original is left unchanged; the result shares its layers and parameters.
    Raises whatever `symbolic_trace` raises for a model with data-dependent control flow.
    """
    signature = _tensor_signature(model)
    cached = _canonical_cache.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    graph_module = _canonicalise(model)
    _canonical_cache[model] = (signature, graph_module)
    return graph_module


def has_canonical_form(model: nn.Module) -> bool:
    """Whether `canonical_form(model)` succeeds; fx cannot trace data-dependent control flow."""
    try:
        canonical_form(model)
    except Exception:  # symbolic tracing fails in many ways: TraceError, TypeError, ...
        return False
    return True


def activation_nodes(graph_module: fx.GraphModule) -> list[str]:
    """The names of the canonical ReLU modules, in the order the graph calls them."""
    return [
        str(node.target)
        for node in graph_module.graph.nodes
        if node.op == "call_module"
        and isinstance(graph_module.get_submodule(str(node.target)), nn.ReLU)
    ]


def rewritten_form(
    model: nn.Module,
    key: Hashable,
    replace: Callable[[str, nn.Module], nn.Module | None],
) -> fx.GraphModule:
    """The canonical form of `model` with some modules swapped, cached per model and `key`.

    `replace(name, module)` is asked about every module the canonical graph calls and returns
    its substitute, or None to keep it. The substitutes live only in the returned GraphModule;
    the canonical form and the model are untouched. `key` names the rewrite (one per method).
    """
    signature = _tensor_signature(model)
    per_model = _rewritten_cache.setdefault(model, {})
    cached = per_model.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    canonical = canonical_form(model)
    attributes = _graph_attributes(canonical, canonical.graph.nodes)
    called = {str(node.target) for node in canonical.graph.nodes if node.op == "call_module"}
    for name in called:
        substitute = replace(name, attributes[name])
        if substitute is not None:
            attributes[name] = substitute
    graph = _copy(canonical.graph)
    rewritten = _graph_module(attributes, graph, training=canonical.training)
    per_model[key] = (signature, rewritten)
    return rewritten


def _canonicalise(model: nn.Module) -> fx.GraphModule:
    graph = _copy(model.graph if isinstance(model, fx.GraphModule) else _trace(model))
    attributes = _graph_attributes(model, graph.nodes)
    names = _UniqueNames(model)
    visited: set[fx.Node] = set()
    for node in list(graph.nodes):
        visited.add(node)
        rewrite = _canonical_call(node, attributes)
        if rewrite is None:
            continue
        module, name, args, mutated = rewrite
        name = names.take(name, replaces_own=node.op == "call_module" and name == node.target)
        attributes[name] = module
        with graph.inserting_before(node):
            replacement = graph.create_node("call_module", name, args)
        visited.add(replacement)
        node.replace_all_uses_with(replacement)
        if mutated is not None:
            # An in-place op changed `mutated` for everything after it; those now read the result.
            for user in list(mutated.users):
                if user not in visited:
                    user.replace_input_with(mutated, replacement)
        graph.erase_node(node)
    graph.lint()
    return _graph_module(attributes, graph, training=model.training)


_Rewrite = tuple[nn.Module, str, tuple[fx.Node, ...], fx.Node | None]


def _trace(model: nn.Module) -> fx.Graph:
    # Methods call the model with the image alone, so optional arguments keep their defaults
    # (traced as placeholders, `x2 is not None` would hold).
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(model.forward).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return fx.symbolic_trace(model, concrete_args=defaults or None).graph


def _canonical_call(node: fx.Node, attributes: dict[str, Any]) -> _Rewrite | None:
    """(new module, its preferred name, its arguments, the node an in-place op mutated), or None
    when `node` is not a ReLU, an addition of two computed tensors or a concatenation."""
    if node.op == "call_function" and node.target in _CAT_FUNCTIONS:
        return _concat_call(node)
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node):
        return None
    if node.op == "call_module":
        return _module_call(node, first, attributes[str(node.target)])
    if node.op == "call_function":
        return _function_call(node, first)
    if node.op == "call_method":
        return _method_call(node, first)
    return None


def _concat_call(node: fx.Node) -> _Rewrite | None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        return None
    return Concat(dim), "concat", _nodes(tensors), None


def _module_call(node: fx.Node, first: fx.Node, module: nn.Module) -> _Rewrite | None:
    if isinstance(module, nn.ReLU):
        # The first call of a ReLU module keeps its name, so layer names still find it.
        return nn.ReLU(), str(node.target), (first,), first if module.inplace else None
    if (
        isinstance(module, OnnxBinaryMathOperation)
        and module.math_op_function is torch.add
        and module.broadcast != 1
        and len(node.args) == 2
    ):
        return _sum_call(first, node.args[1], None)
    if isinstance(module, OnnxConcat):
        return Concat(module.axis), str(node.target), _nodes(node.args), None
    return None


def _function_call(node: fx.Node, first: fx.Node) -> _Rewrite | None:
    target = node.target
    mutated = first if target in _INPLACE_FUNCTIONS else None
    if target in _RELU_FUNCTIONS:
        if node.kwargs.get("inplace", False) or (len(node.args) > 1 and node.args[1]):
            mutated = first
        return nn.ReLU(), "relu", (first,), mutated
    if target in _ADD_FUNCTIONS and len(node.args) == 2 and node.kwargs.get("alpha", 1) == 1:
        return _sum_call(first, node.args[1], mutated)
    return None


def _method_call(node: fx.Node, first: fx.Node) -> _Rewrite | None:
    mutated = first if str(node.target).endswith("_") else None
    if node.target in ("relu", "relu_") and len(node.args) == 1:
        return nn.ReLU(), "relu", (first,), mutated
    if node.target in ("add", "add_") and len(node.args) == 2 and not node.kwargs:
        return _sum_call(first, node.args[1], mutated)
    return None


def _sum_call(a: fx.Node, b: object, mutated: fx.Node | None) -> _Rewrite | None:
    if not isinstance(b, fx.Node) or "get_attr" in (a.op, b.op):
        return None
    return Sum(), "sum", (a, b), mutated


def _copy(graph: fx.Graph) -> fx.Graph:
    """A copy of `graph` that no module owns yet."""
    copied = fx.Graph()
    copied.output(copied.graph_copy(graph, {}))
    return copied


def _nodes(values: Iterable[object]) -> tuple[fx.Node, ...]:
    return tuple(value for value in values if isinstance(value, fx.Node))


def _graph_attributes(root: nn.Module, nodes: Iterable[fx.Node]) -> dict[str, Any]:
    """Every module and tensor the graph's nodes name, by their dotted name in `root`."""
    return {
        str(node.target): operator.attrgetter(str(node.target))(root)
        for node in nodes
        if node.op in ("call_module", "get_attr")
    }


def _graph_module(attributes: dict[str, Any], graph: fx.Graph, *, training: bool) -> fx.GraphModule:
    # Built from a dict, the GraphModule holds the shared layers under fresh container modules,
    # so adding a module to it never adds one to the model.
    graph_module = fx.GraphModule(attributes, graph, class_name="CanonicalModel")
    graph_module.training = training
    return graph_module


def _tensor_signature(model: nn.Module) -> _Signature:
    """Where every parameter and buffer lives: it changes when the model moves or is reloaded
    into new tensors, which a GraphModule holding the old ones would not see."""
    return tuple(
        (tensor.device, tensor.data_ptr()) for tensor in chain(model.parameters(), model.buffers())
    )


class _UniqueNames:
    """Attribute names that clash neither with the model's nor with each other."""

    def __init__(self, model: nn.Module) -> None:
        self._taken: set[str] = set()
        for name in chain(
            (name for name, _ in model.named_modules()),
            (name for name, _ in model.named_parameters()),
            (name for name, _ in model.named_buffers()),
        ):
            parts = name.split(".")
            self._taken |= {".".join(parts[: i + 1]) for i in range(len(parts))}
        self._used: set[str] = set()

    def take(self, name: str, *, replaces_own: bool) -> str:
        """`name` if it is free, or if it is the path of the module being replaced
        (`replaces_own`) and no new module took it yet; else `name_1`, `name_2`, ... that is free.
        """
        candidate, count = name, 0
        while candidate in self._used or (
            candidate in self._taken and not (replaces_own and candidate == name)
        ):
            count += 1
            candidate = f"{name}_{count}"
        self._used.add(candidate)
        return candidate
