"""Segmentation networks for the integration stack, each in both formats: torchvision's DeepLabV3
(MobileNetV3 backbone, answering `{"out": logits}`) and MONAI's 2-D UNet.

Random weights with BatchNorm statistics calibrated on random data. The UNet's last bias keeps
its class 2 below the others everywhere, so that a test can ask for a class that no pixel is
predicted as.
"""

import json
from pathlib import Path

import torch
from monai.networks.nets import UNet
from safetensors.torch import save_file
from torch import nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

SIZE = 64
DEEPLAB_LABELS = ["background", "lesion", "vessel", "bone"]
UNET_LABELS = ["background", "organ", "never"]
NEVER_PREDICTED = 2
DEEPLAB_KWARGS: dict[str, object] = {
    "weights": None,
    "weights_backbone": None,
    "num_classes": len(DEEPLAB_LABELS),
}
UNET_KWARGS: dict[str, object] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": len(UNET_LABELS),
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "act": "RELU",
    "norm": "BATCH",  # MONAI's default InstanceNorm has no LRP or DeepLIFT rule
}


def _calibrated(network: nn.Module, channels: int) -> nn.Module:
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average over the calibration passes
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.randn(4, channels, SIZE, SIZE))
    return network.eval()


class _Out(nn.Module):
    """The network's `out` entry alone: what the ONNX export names its only output."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs)["out"]


def _export(network: nn.Module, channels: int, path: Path, output: str) -> None:
    torch.onnx.export(
        network,
        (torch.zeros(1, channels, SIZE, SIZE),),
        str(path),
        dynamo=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        opset_version=17,
        input_names=["input"],
        output_names=[output],
        dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
    )


def _write(folder: Path, manifest: dict[str, object]) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _manifest(labels: list[str], channels: int, description: str) -> dict[str, object]:
    return {
        "version": "1",
        "labels": labels,
        "task": "segmentation",
        "background": 0,
        "input": {
            "channels": channels,
            "height": SIZE,
            "width": SIZE,
            "mean": [0.5] * channels,
            "std": [0.25] * channels,
        },
        "description": description,
    }


def add_deeplab(repository: Path) -> None:
    """`deeplab` (safetensors, torchvision factory, `output.key` "out") and `deeplab-onnx`."""
    torch.manual_seed(0)
    network = _calibrated(deeplabv3_mobilenet_v3_large(**DEEPLAB_KWARGS), 3)  # type: ignore[arg-type]
    manifest = _manifest(DEEPLAB_LABELS, 3, "torchvision DeepLabV3-MobileNetV3, random weights")
    folder = _write(
        repository / "deeplab" / "1",
        {
            **manifest,
            "id": "deeplab",
            "format": "safetensors",
            "architecture": {
                "factory": "torchvision.models.segmentation:deeplabv3_mobilenet_v3_large",
                "kwargs": DEEPLAB_KWARGS,
            },
            "output": {"key": "out"},
            "cam_layer": "backbone.16",
        },
    )
    save_file(network.state_dict(), str(folder / "model.safetensors"))
    folder = _write(
        repository / "deeplab-onnx" / "1",
        {**manifest, "id": "deeplab-onnx", "format": "onnx", "output": {"key": "out"}},
    )
    _export(_Out(network), 3, folder / "model.onnx", "out")


def add_unet(repository: Path) -> None:
    """`unet` (safetensors, MONAI factory) and `unet-onnx`; class 2 is never predicted."""
    torch.manual_seed(1)
    network = _calibrated(UNet(**UNET_KWARGS), 1)  # type: ignore[arg-type]
    last_bias = [
        parameter
        for name, parameter in network.named_parameters()
        if name.endswith("bias") and parameter.shape == (len(UNET_LABELS),)
    ][-1]
    with torch.no_grad():
        last_bias[NEVER_PREDICTED] = -1e4
    manifest = _manifest(UNET_LABELS, 1, "MONAI 2-D UNet, random weights")
    folder = _write(
        repository / "unet" / "1",
        {
            **manifest,
            "id": "unet",
            "format": "safetensors",
            "architecture": {"factory": "monai.networks.nets:UNet", "kwargs": UNET_KWARGS},
        },
    )
    save_file(network.state_dict(), str(folder / "model.safetensors"))
    folder = _write(
        repository / "unet-onnx" / "1", {**manifest, "id": "unet-onnx", "format": "onnx"}
    )
    _export(network, 1, folder / "model.onnx", "logits")
