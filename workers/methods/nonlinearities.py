"""The nonlinearities a model computes, read from its canonical form, and the needs they decide.

Guided backpropagation guides ReLUs, DeepLIFT rescales ReLUs and max-pools, and the LRP rules
are defined for ReLU networks of convolutions, linear layers, BatchNorm and pools. A model with
no ReLU (a vision transformer's GELU) has nothing to guide, and one with other nonlinearities
(GELU, softmax attention, LayerNorm, products of two activations) passes plain gradients through
them, which is neither rule: both are refused, with what was found.
"""

import operator
import re

import torch
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from torch import fx, nn

from workers.methods.canonical import activation_nodes, canonical_form
from workers.methods.facts import need_check

_PIECEWISE_LINEAR = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_NONLINEAR_MODULES: dict[type[nn.Module], str] = {
    nn.GELU: "GELU",
    nn.SiLU: "SiLU",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.ELU: "ELU",
    nn.SELU: "SELU",
    nn.CELU: "CELU",
    nn.LeakyReLU: "LeakyReLU",
    nn.PReLU: "PReLU",
    nn.ReLU6: "ReLU6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Hardtanh: "hardtanh",
    nn.Mish: "Mish",
    nn.Softplus: "softplus",
    nn.Softmax: "softmax",
    nn.LogSoftmax: "softmax",
    nn.MultiheadAttention: "softmax attention",
    nn.LayerNorm: "LayerNorm",
    nn.GroupNorm: "GroupNorm",
    nn.InstanceNorm1d: "InstanceNorm",
    nn.InstanceNorm2d: "InstanceNorm",
    nn.InstanceNorm3d: "InstanceNorm",
    nn.LocalResponseNorm: "LocalResponseNorm",
}
# Functions, tensor methods and converted ONNX operators, by lower-case name.
_NONLINEAR_NAMES: dict[str, str] = {
    "gelu": "GELU",
    "silu": "SiLU",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "erf": "erf (GELU)",
    "exp": "exp",
    "log": "log",
    "pow": "pow",
    "sqrt": "sqrt",
    "rsqrt": "sqrt",
    "reciprocal": "reciprocal",
    "elu": "ELU",
    "leaky_relu": "LeakyReLU",
    "relu6": "ReLU6",
    "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid",
    "mish": "Mish",
    "softplus": "softplus",
    "softmax": "softmax",
    "log_softmax": "softmax",
    "layer_norm": "LayerNorm",
    "group_norm": "GroupNorm",
    "instance_norm": "InstanceNorm",
    "scaled_dot_product_attention": "softmax attention",
    "shifted_window_attention": "softmax attention",
}
_PRODUCTS = {operator.mul, operator.imul, operator.matmul, torch.mul, torch.matmul, torch.bmm}
_PRODUCT_METHODS = {"mul", "mul_", "matmul", "bmm"}
_DIVISIONS = {operator.truediv, torch.div, torch.true_divide}


def nonlinearities(model: nn.Module) -> list[str]:
    """The kinds of non-ReLU nonlinearity `model` computes, sorted, each once.

    Raises whatever `canonical_form` raises for a model torch.fx cannot trace.
    """
    graph_module = canonical_form(model)
    found = {_kind(graph_module, node) for node in graph_module.graph.nodes}
    return sorted(kind for kind in found if kind is not None)


def _kind(root: fx.GraphModule, node: fx.Node) -> str | None:
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        if isinstance(module, _PIECEWISE_LINEAR):
            return None
        for module_type, kind in _NONLINEAR_MODULES.items():
            if isinstance(module, module_type):
                return kind
        if isinstance(module, OnnxBinaryMathOperation):
            return _binary_kind(module.math_op_function, node)
        return _named_kind(type(module).__name__.removeprefix("Onnx"))
    if node.op == "call_function":
        return _binary_kind(node.target, node) or _named_kind(getattr(node.target, "__name__", ""))
    if node.op == "call_method":
        if node.target in _PRODUCT_METHODS and _computed_operands(node) >= 2:
            return "product of two activations"
        return _named_kind(str(node.target))
    return None


def _binary_kind(function: object, node: fx.Node) -> str | None:
    """A product or quotient of two computed tensors (attention scores, gates) is nonlinear."""
    if _computed_operands(node) < 2:
        return None
    if function in _PRODUCTS:
        return "product of two activations"
    if function in _DIVISIONS:
        return "division by an activation"
    return None


def _named_kind(name: str) -> str | None:
    # onnx2torch names operator modules by opset range: OnnxSoftmaxV1V11.
    squashed = re.sub(r"(v\d+)+$", "", name.lower().replace("_", ""))
    for key, kind in _NONLINEAR_NAMES.items():
        if squashed == key.replace("_", ""):
            return kind
    return "softmax attention" if "attention" in squashed else None


def _computed_operands(node: fx.Node) -> int:
    """How many of the node's tensor operands are computed from the input (not constants)."""
    return sum(
        1
        for argument in (*node.args, *node.kwargs.values())
        if isinstance(argument, fx.Node) and argument.op != "get_attr"
    )


@need_check("canonical_form")
def _canonical_form_check(model: nn.Module) -> str | None:
    try:
        canonical_form(model)
    except Exception as exc:  # symbolic tracing fails in many ways: TraceError, TypeError, ...
        return f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})"
    return None


@need_check("relu")
def _relu_check(model: nn.Module) -> str | None:
    untraceable = _canonical_form_check(model)
    if untraceable is not None:
        return untraceable
    if activation_nodes(canonical_form(model)):
        return None
    found = nonlinearities(model)
    uses = f" (its nonlinearities are {', '.join(found)})" if found else ""
    return f"the model has no ReLU activation{uses}"


@need_check("piecewise_linear")
def _piecewise_linear_check(model: nn.Module) -> str | None:
    untraceable = _canonical_form_check(model)
    if untraceable is not None:
        return untraceable
    found = nonlinearities(model)
    if not found:
        return None
    return (
        f"the model computes {', '.join(found)}, for which no propagation rule is implemented "
        "(they are defined here for ReLUs and max-pools)"
    )
