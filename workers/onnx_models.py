"""ONNX models: ONNX Runtime sessions for forward passes, PyTorch conversions for gradients."""

from pathlib import Path

import numpy as np
import onnx
import onnx2torch
import onnxruntime
import torch


def fold_identity_initializers(model: onnx.ModelProto) -> int:
    """Turn every Identity node over an initializer into an initializer, in place.

    The TorchScript exporter stores equal tensors once and reaches the copies through Identity
    nodes; onnx2torch 1.5.15 reads Conv weights only from initializers and fails with a KeyError.
    Returns how many nodes were folded.
    """
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    # A graph output must stay a node output for onnx2torch to wire it up.
    graph_outputs = {value.name for value in graph.output}
    kept_nodes = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.domain in ("", "ai.onnx")
            and node.input[0] in initializers
            and node.output[0] not in graph_outputs
        ):
            folded = onnx.TensorProto()
            folded.CopyFrom(initializers[node.input[0]])
            folded.name = node.output[0]
            graph.initializer.append(folded)
            initializers[folded.name] = folded
        else:
            kept_nodes.append(node)
    folded_count = len(graph.node) - len(kept_nodes)
    if folded_count:
        del graph.node[:]
        graph.node.extend(kept_nodes)
    return folded_count


def convert_to_torch(model: onnx.ModelProto) -> torch.nn.Module:
    """Convert an ONNX model to a PyTorch module in eval mode, folding Identity nodes first.

    Mutates `model`. Module names are onnx2torch's, derived from the ONNX node names
    (e.g. `layer4/layer4/1/relu_1/Relu` or `Relu_12`).
    """
    fold_identity_initializers(model)
    return onnx2torch.convert(model).eval()


def execution_providers(device: torch.device) -> list[str | tuple[str, dict[str, int]]]:
    """ONNX Runtime providers for `device`: CUDA for a cuda device when available, else CPU."""
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(model_path: Path, device: torch.device) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for the model file, on the providers that suit `device`.

    Its threads sleep when a run ends instead of spinning: a worker follows ONNX Runtime's
    forward passes with PyTorch's, and spinning threads slowed those by 0.3 ms per operation on
    two cores (`bench/gateway.py`'s trivial model: 5.9 ms of compute per job).
    """
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(model_path), options, providers=execution_providers(device)
    )


def keep_output(model: onnx.ModelProto, name: str) -> None:
    """Make the graph output `name` the model's only one, in place, so that its conversion
    answers that tensor alone. Raises ValueError when the graph has no output of that name."""
    outputs = [output for output in model.graph.output if output.name == name]
    if not outputs:
        names = [output.name for output in model.graph.output]
        raise ValueError(f"output.key {name!r} is not an output of the graph, which has {names}")
    del model.graph.output[:]
    model.graph.output.extend(outputs)


def run_session(
    session: onnxruntime.InferenceSession, inputs: torch.Tensor, output: str | None = None
) -> torch.Tensor:
    """The session's output `output` (by default its first) for `inputs` fed to its first
    input, as a float CPU tensor."""
    feed = {session.get_inputs()[0].name: inputs.detach().cpu().numpy().astype(np.float32)}
    (outputs,) = session.run([output or session.get_outputs()[0].name], feed)
    return torch.from_numpy(outputs)


def conversion_gap(
    module: torch.nn.Module,
    session: onnxruntime.InferenceSession,
    inputs: torch.Tensor,
    output: str | None = None,
) -> float:
    """How far the module's logits are from the session's (its output `output`) on `inputs`.

    The largest absolute difference divided by 1 + the largest absolute logit of the session.
    Raises ValueError when the two disagree on the output shape.
    """
    expected = run_session(session, inputs, output)
    with torch.no_grad():
        actual = module(inputs).float().cpu()
    if actual.shape != expected.shape:
        raise ValueError(
            f"the conversion outputs shape {tuple(actual.shape)}, "
            f"ONNX Runtime {tuple(expected.shape)}"
        )
    return float((actual - expected).abs().max() / (1 + expected.abs().max()))
