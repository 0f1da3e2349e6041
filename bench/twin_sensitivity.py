"""How far an ONNX twin's maps may fall from its PyTorch model's, and why.

For each gradient method, on the demo model and a random-weight ResNet-50 (BatchNorm calibrated,
64 x 64 RGB noise images normalised with ImageNet statistics), three largest deviations relative
to the PyTorch map's range:

- folded: the twin exported with BatchNorm folded into the convolutions (the exporter's default),
  converted by onnx2torch;
- kept: the twin exported with BatchNorm kept as its own node (what the project ships and tests);
- perturbed: the PyTorch model itself on the input times (1 + 1e-7 · noise), i.e. float32
  round-off.

Where "folded" is as large as "perturbed", the gap is the model's own float32 sensitivity — a
ReLU sitting within round-off of its kink — and not an error of either implementation.
"""

import argparse
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torchvision.models import resnet50

from workers.demo.data import make_dataset
from workers.methods import Normalisation, explain
from workers.onnx_models import convert_to_torch
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
SIZE = 64
IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
METHODS: dict[str, dict[str, object]] = {
    "saliency": {},
    "guided_backprop": {},
    "deeplift": {},
    "lrp": {},
    "integrated_gradients": {"steps": 32, "max_steps": 32},
    "smoothgrad": {"samples": 8},
}


def twin(model: nn.Module, example: torch.Tensor, *, keep_batch_norm: bool) -> nn.Module:
    """`model` exported to ONNX and converted back by onnx2torch."""
    buffer = io.BytesIO()
    options: dict[str, object] = (
        {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
        if keep_batch_norm
        else {}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            **options,  # type: ignore[arg-type]
        )
    return convert_to_torch(onnx.load_from_string(buffer.getvalue())).requires_grad_(False)


def calibrated_resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = resnet50(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(noise_images(8, seed=100 + seed))
    return model.eval().requires_grad_(False)


def noise_images(count: int, seed: int) -> torch.Tensor:
    """RGB noise images, normalised like ImageNet inputs."""
    pixels = torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)
    return (pixels - mean) / torch.tensor(IMAGENET.std).view(1, 3, 1, 1)


def deviation(actual: torch.Tensor, expected: torch.Tensor) -> float:
    span = float(expected.max() - expected.min())
    return float((actual - expected).abs().max()) / span if span > 0 else 0.0


def measure(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    normalisation: Normalisation,
) -> None:
    folded = twin(model, images[:1], keep_batch_norm=False)
    kept = twin(model, images[:1], keep_batch_norm=True)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    print(f"\n{name}: largest deviation over {len(images)} images, relative to the map's range")
    print(f"{'method':22} {'folded':>10} {'kept':>10} {'perturbed':>10}")
    generator = torch.Generator().manual_seed(7)
    perturbed = images * (1 + 1e-7 * torch.randn(images.shape, generator=generator))
    for method, params in METHODS.items():
        worst = {"folded": 0.0, "kept": 0.0, "perturbed": 0.0}
        for row in range(len(images)):
            image, target = images[row : row + 1], targets[row : row + 1]
            maps = {
                label: explain(
                    method,
                    network,
                    inputs,
                    target,
                    params,
                    cam_layer="",
                    normalisation=normalisation,
                ).values
                for label, network, inputs in [
                    ("reference", model, image),
                    ("folded", folded, image),
                    ("kept", kept, image),
                    ("perturbed", model, perturbed[row : row + 1]),
                ]
            }
            for label in worst:
                worst[label] = max(worst[label], deviation(maps[label], maps["reference"]))
        print(
            f"{method:22} {worst['folded']:10.1e} {worst['kept']:10.1e} {worst['perturbed']:10.1e}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(True)

    demo = load_model(DEMO, torch.device("cpu"))
    pixels, _, _ = make_dataset(args.images, seed=2_000_000)
    spec = demo.manifest.input
    demo_normalisation = Normalisation(tuple(spec.mean), tuple(spec.std))
    demo_images = (torch.from_numpy(np.asarray(pixels))[:, None] - spec.mean[0]) / spec.std[0]
    experiments: list[tuple[str, Callable[[], nn.Module], torch.Tensor, Normalisation]] = [
        ("demo-lesions (128 x 128)", lambda: demo.module, demo_images, demo_normalisation),
        (
            "ResNet-50 (random, 64 x 64)",
            calibrated_resnet50,
            noise_images(args.images, 4),
            IMAGENET,
        ),
    ]
    for name, build, images, normalisation in experiments:
        measure(name, build(), images, normalisation)


if __name__ == "__main__":
    main()
