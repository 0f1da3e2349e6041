"""Real architectures for the integration stack: torchvision's ResNet-50 in both formats.

Random weights are enough to prove the machinery; BatchNorm statistics are calibrated on random
data first, so that the network's activations are in a sane range (an uncalibrated ResNet-50's
logits reach ~100 and its gradients become chaotic).
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import resnet50

from bench.harness import write_torchvision_model

SIZE = 64


def calibrated_resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = resnet50(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


def add_resnet50(repository: Path) -> None:
    """`resnet50` (safetensors + torchvision factory) and `resnet50-onnx` in `repository`."""
    model = calibrated_resnet50()
    description = "torchvision ResNet-50 with random weights, for tests"
    written = write_torchvision_model(repository, "resnet50", model, SIZE, description)
    manifest = json.loads((written / "manifest.json").read_text())
    del manifest["architecture"], manifest["cam_layer"]
    folder = repository / "resnet50-onnx" / "1"
    folder.mkdir(parents=True)
    # BatchNorm kept as its own node rather than folded into the convolutions, so that the twin
    # computes what the eager model computes, operation for operation. With folded weights the
    # twin differs by float round-off, and on a random ResNet-50 that alone moves an input
    # gradient by up to 4 % of its range: about one of its ~600,000 ReLUs sits within round-off
    # of zero on any input, and flipping it changes the gradient (`bench/twin_sensitivity.py`).
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(folder / "model.onnx"),
        dynamo=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    (folder / "manifest.json").write_text(
        json.dumps({**manifest, "id": "resnet50-onnx", "format": "onnx"})
    )


UNBIASED_DEMO = "demo-lesions-unbiased"


def add_unbiased_demo(repository: Path, shipped: Path) -> None:
    """`demo-lesions-unbiased`: the shipped demo model's weights with every additive term zeroed
    (the head's bias, BatchNorm's shift and running mean), so that BatchNorm only scales and a
    layer adds nothing of its own. On such a network LRP's relevance is conserved layer by layer,
    and the input relevance sums to the explained logit."""
    weights = load_file(str(shipped / "model.safetensors"))
    unbiased = {
        name: torch.zeros_like(tensor) if name.endswith((".bias", ".running_mean")) else tensor
        for name, tensor in weights.items()
    }
    manifest = json.loads((shipped / "manifest.json").read_text())
    manifest.update(
        id=UNBIASED_DEMO, description="the demo model without biases, for tests", notes=""
    )
    folder = repository / UNBIASED_DEMO / "1"
    folder.mkdir(parents=True)
    save_file(unbiased, str(folder / "model.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
