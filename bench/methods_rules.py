"""Time per map of the methods that rewrite the backward pass: `guided_backprop`,
`guided_gradcam` and `deeplift`, with their default parameters.

For each model, one image, one target: the first call (which builds the cached canonical form),
the best of 5 later calls (wall and process CPU time), the bare cost of the method's passes
(forward + input gradient; two of them for guided Grad-CAM; one on the doubled [x; x0] batch
for DeepLIFT) with the ratio method / bare, and Captum's implementation on the same model with
the ratio Captum / ours where Captum runs. DeepLIFT's completeness error is printed beside it.
Models: the demo model (128 x 128 grayscale) and torchvision's ResNet-50 with random weights and
calibrated BatchNorm (224 x 224). CPU unless `--device` says otherwise.
"""

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import GuidedGradCam as CaptumGuidedGradCam
from torch import nn
from torchvision.models import resnet50

from workers.methods import explain
from workers.methods.base import input_gradient
from workers.methods.baselines import make_baseline
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
REPEATS = 5  # best of: the least disturbed by other processes


def calibrated_resnet50(device: torch.device) -> nn.Module:
    """ResNet-50 with random weights; BatchNorm statistics from random data keep it sane."""
    torch.manual_seed(0)
    model = resnet50(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 224, 224))
    return model.eval().requires_grad_(False).to(device)


@dataclass(frozen=True)
class Timing:
    """Best-of-`REPEATS` wall time and process CPU time (all threads) of one call, in seconds.

    On a CPU shared with other work the CPU time is the steadier measure of a method's cost, so
    ratios use it there; on CUDA they use wall time.
    """

    wall: float
    cpu: float

    def cost(self, device: torch.device) -> float:
        return self.wall if device.type == "cuda" else self.cpu

    def __str__(self) -> str:
        return f"{self.wall * 1e3:8.1f} ms wall {self.cpu * 1e3:8.1f} ms cpu"


def timed(run: Callable[[], object], repeats: int = REPEATS) -> Timing:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(min(walls), min(cpus))


def bench_model(name: str, model: nn.Module, image: torch.Tensor, cam_layer: str) -> None:
    device = image.device
    target = torch.tensor([1], device=device)
    baseline = make_baseline("black", image)
    doubled = torch.cat([image, baseline])

    def method(method_id: str) -> Callable[[], object]:
        return lambda: explain(method_id, model, image, target, {}, cam_layer=cam_layer)

    bare = timed(lambda: input_gradient(model, image, target))
    bare_doubled = timed(lambda: input_gradient(model, doubled, target.repeat(2)))
    layer = model.get_submodule(cam_layer)
    captum: dict[str, Callable[[], object] | None] = {
        "guided_backprop": lambda: CaptumGuidedBackprop(model).attribute(image, target=1),
        "guided_gradcam": lambda: CaptumGuidedGradCam(model, layer).attribute(image, target=1),
        # Captum's DeepLift refuses models that reuse a ReLU module, as ResNet-50 does.
        "deeplift": (
            (lambda: CaptumDeepLift(model).attribute(image, baseline, target=1))
            if name == "demo"
            else None
        ),
    }
    passes = {
        "guided_backprop": bare.cost(device),
        "guided_gradcam": 2 * bare.cost(device),
        "deeplift": bare_doubled.cost(device),
    }

    print(f"\n{name}: image {tuple(image.shape)}")
    print(f"  bare forward + input gradient        {bare}")
    print(f"  bare, on the doubled [x; x0] batch   {bare_doubled}")
    for method_id in ("guided_backprop", "guided_gradcam", "deeplift"):
        first = timed(method(method_id), repeats=1)
        ours = timed(method(method_id))
        print(f"  {method_id:16s} first call {first}")
        ratio = ours.cost(device) / passes[method_id]
        line = f"  {method_id:16s} per map    {ours}  ours/bare {ratio:5.2f}"
        reference = captum[method_id]
        if reference is not None:
            theirs = timed(reference)
            line += f"  captum {theirs}  captum/ours {theirs.cost(device) / ours.cost(device):5.2f}"
        print(line)

    values = explain("deeplift", model, image, target, {}, cam_layer=cam_layer).values
    with torch.no_grad():
        logits = model(doubled)[:, 1].double()
    change = float(logits[0] - logits[1])
    error = abs(float(values.double().sum()) - change) / abs(change)
    print(f"  deeplift completeness: |sum - Δlogit| / |Δlogit| = {error:.2e} (Δlogit {change:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    device = torch.device(parser.parse_args().device)
    print(f"device {device}, {torch.get_num_threads()} threads, best of {REPEATS} calls each")

    demo = load_model(DEMO, device)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 1, 128, 128, generator=generator).to(device)
    bench_model("demo", demo.module, image, demo.default_cam_layer)

    image = torch.randn(1, 3, 224, 224, generator=generator).to(device)
    bench_model("resnet50", calibrated_resnet50(device), image, "layer4")


if __name__ == "__main__":
    main()
