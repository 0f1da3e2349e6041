"""The shipped `demo-lesions` model: manifest, weights, accuracy on unseen data, ONNX twin."""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import safetensors.torch
import torch
from method_checks import EPS32
from torch import nn

from schemas.models import ModelManifest
from workers.demo.data import make_dataset
from workers.demo.model import build_lesion_net

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"
# Far from the training (0..3999) and held-out (1_000_000..) seeds used by workers.demo.train.
FRESH_SEED = 5_000_000


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return ModelManifest.model_validate(json.loads((MODEL_DIR / "manifest.json").read_text()))


@pytest.fixture(scope="module")
def model(manifest: ModelManifest) -> nn.Module:
    assert manifest.architecture is not None
    net = build_lesion_net(**manifest.architecture.kwargs)  # type: ignore[arg-type]
    net.load_state_dict(safetensors.torch.load_file(MODEL_DIR / "model.safetensors"), strict=True)
    return net.eval()


def normalise(images: np.ndarray, manifest: ModelManifest) -> torch.Tensor:
    x = torch.from_numpy(images).unsqueeze(1)
    return (x - manifest.input.mean[0]) / manifest.input.std[0]


def test_manifest_declares_the_demo_model(manifest: ModelManifest) -> None:
    assert (manifest.id, manifest.version, manifest.format) == ("demo-lesions", "1", "safetensors")
    assert manifest.architecture is not None
    assert manifest.architecture.factory == "workers.demo.model:build_lesion_net"
    assert manifest.labels == ["normal", "nodule", "mass"]
    assert (manifest.input.channels, manifest.input.height, manifest.input.width) == (1, 128, 128)


def test_cam_layer_is_the_last_relu(model: nn.Module, manifest: ModelManifest) -> None:
    relus = [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
    assert manifest.cam_layer == relus[-1]
    assert len({id(module) for module in model.modules() if isinstance(module, nn.ReLU)}) == 4


def test_head_is_global_average_pool_and_linear(model: nn.Module) -> None:
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert isinstance(model.classifier, nn.Linear)


def test_weights_are_float32_except_batch_counters() -> None:
    tensors = safetensors.torch.load_file(MODEL_DIR / "model.safetensors")
    for name, tensor in tensors.items():
        expected = torch.int64 if name.endswith("num_batches_tracked") else torch.float32
        assert tensor.dtype == expected, name


def test_classifies_unseen_samples(model: nn.Module, manifest: ModelManifest) -> None:
    images, labels, _ = make_dataset(150, FRESH_SEED)
    with torch.no_grad():
        predicted = model(normalise(images, manifest)).argmax(1).numpy()
    assert (predicted == labels).mean() >= 0.9


def test_onnx_matches_safetensors(model: nn.Module, manifest: ModelManifest) -> None:
    images, _, _ = make_dataset(8, FRESH_SEED + 1000)
    x = normalise(images, manifest)
    with torch.no_grad():
        expected = model(x).numpy()
    session = onnxruntime.InferenceSession(
        str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    # ONNX Runtime sums each dot product in another order than torch; either order's float32
    # error grows like eps32 · √n over n products, so over the 5 layers with weights (fan-in up
    # to 64 · 3 · 3) the logits differ by about 2 · eps32 · √(5 · 576) ≈ 1.3e-5 of their size.
    bound = 2 * EPS32 * np.sqrt(5 * 64 * 3 * 3) * np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, atol=bound, rtol=0)
