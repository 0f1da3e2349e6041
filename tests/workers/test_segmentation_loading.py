"""Loading segmentation models: the output shape the manifest's task needs, `output.key` for a
network answering a mapping (safetensors) or one output of several (ONNX)."""

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet
from safetensors.torch import save_file
from torch import nn

from workers.repository import ModelLoadError, load_model

SIZE = 16
UNET_KWARGS: dict[str, object] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [2, 4],
    "strides": [2],
    "num_res_units": 0,
    "act": "RELU",
}


def unet() -> nn.Module:
    torch.manual_seed(0)
    return UNet(**UNET_KWARGS).eval()  # type: ignore[arg-type]


class TwoOutputs(nn.Module):
    """The UNet's logits under `out`, and their mean beside them, as graph outputs or a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.net = unet()

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(inputs)
        return {"mean": logits.mean(dim=1), "out": logits}


def write(folder: Path, **manifest: object) -> Path:
    folder.mkdir(parents=True)
    body = {
        "id": folder.parent.name,
        "version": folder.name,
        "labels": ["background", "a", "b"],
        "input": {"channels": 1, "height": SIZE, "width": SIZE, "mean": [0.5], "std": [0.25]},
        **manifest,
    }
    (folder / "manifest.json").write_text(json.dumps(body))
    return folder


def safetensors_unet(folder: Path, **manifest: object) -> Path:
    write(
        folder,
        format="safetensors",
        architecture={"factory": "monai.networks.nets:UNet", "kwargs": UNET_KWARGS},
        **manifest,
    )
    save_file(unet().state_dict(), str(folder / "model.safetensors"))
    return folder


def onnx_two_outputs(folder: Path, **manifest: object) -> Path:
    write(folder, format="onnx", **manifest)
    torch.onnx.export(
        TwoOutputs(),
        (torch.zeros(1, 1, SIZE, SIZE),),
        str(folder / "model.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["mean", "out"],
        dynamic_axes={"input": {0: "batch"}, "mean": {0: "batch"}, "out": {0: "batch"}},
    )
    return folder


def test_a_segmentation_manifest_loads_a_network_of_pixel_logits(tmp_path: Path) -> None:
    folder = safetensors_unet(tmp_path / "unet" / "1", task="segmentation", background=0)
    model = load_model(folder, torch.device("cpu"))
    info = model.info(["saliency"])
    assert (info.task, info.background) == ("segmentation", 0)
    inputs = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_logits(inputs), unet()(inputs), rtol=0, atol=0)


def test_a_classification_manifest_refuses_pixel_logits(tmp_path: Path) -> None:
    folder = safetensors_unet(tmp_path / "unet" / "1")
    with pytest.raises(ModelLoadError, match=r"a classification model must output \(1, 3\)"):
        load_model(folder, torch.device("cpu"))


def test_onnx_output_key_names_the_graph_output_of_the_logits(tmp_path: Path) -> None:
    folder = onnx_two_outputs(tmp_path / "two" / "1", task="segmentation", output={"key": "out"})
    model = load_model(folder, torch.device("cpu"))
    inputs = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = TwoOutputs()(inputs)["out"]
        converted = model.module(inputs)
    # ONNX Runtime's and the conversion's float32 arithmetic against eager PyTorch's.
    torch.testing.assert_close(model.forward_logits(inputs), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(converted, expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_onnx_output_key_is_a_load_error_naming_the_outputs(tmp_path: Path) -> None:
    folder = onnx_two_outputs(tmp_path / "two" / "1", task="segmentation", output={"key": "x"})
    with pytest.raises(ModelLoadError, match=r"'x' is not an output of the graph.*'mean', 'out'"):
        load_model(folder, torch.device("cpu"))


def test_an_onnx_graph_of_several_outputs_needs_a_key(tmp_path: Path) -> None:
    folder = onnx_two_outputs(tmp_path / "two" / "1", task="segmentation")
    with pytest.raises(ModelLoadError, match=r"\['mean', 'out'\]: output.key must name"):
        load_model(folder, torch.device("cpu"))
