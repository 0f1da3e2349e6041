"""Time per map of the forward-only methods, `occlusion` and `rise`, with their default parameters.

For each model, one image, one target: the method's time, the bare cost of its forward passes
(the same number of rows in batches of the same size) and their ratio, and for occlusion Captum's
`Occlusion` on the same windows and fill, with the ratio Captum / ours; then both methods in one
call (`explain_jointly`: their perturbed inputs fill common forward calls, as the worker runs a
request for both) against the two alone. Models: the demo model
(128 x 128 grayscale) in PyTorch and through ONNX Runtime, and torchvision's ResNet-50 with random
weights and calibrated BatchNorm (224 x 224). CPU unless `--device` says otherwise; `--models` and
`--methods` pick a subset.
"""

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn
from torchvision.models import resnet50

from schemas.methods.occlusion import OcclusionParams
from schemas.methods.rise import RiseParams
from workers.methods import explain, explain_jointly
from workers.methods.base import Forward
from workers.methods.baselines import make_baseline
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
MODELS = ("demo", "demo-onnx", "resnet50")
METHODS = ("occlusion", "rise")


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


def onnx_twin(folder: Path) -> Path:
    """A repository version folder serving the demo model from its ONNX file."""
    version = folder / "demo-lesions" / "1"
    version.mkdir(parents=True)
    manifest = json.loads((DEMO / "manifest.json").read_text())
    manifest.update(format="onnx", cam_layer=None)
    del manifest["architecture"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(DEMO / "model.onnx", version / "model.onnx")
    return version


def seconds(run: Callable[..., object], *args: object, **kwargs: object) -> float:
    started = time.perf_counter()
    run(*args, **kwargs)
    return time.perf_counter() - started


def bare_passes(forward: Forward, image: torch.Tensor, rows: int, batch_size: int) -> None:
    """`rows` forward passes of `image` in batches of `batch_size`, as the method batches them."""
    for start in range(0, rows, batch_size):
        forward(image.expand(min(batch_size, rows - start), -1, -1, -1).clone())


def occlusion_windows(side: int, params: OcclusionParams) -> int:
    window = min(params.window, side)
    return (math.ceil((side - window) / params.stride) + 1) ** 2


def captum_occlusion(
    model: nn.Module, image: torch.Tensor, target: int, params: OcclusionParams
) -> None:
    channels = image.shape[1]
    CaptumOcclusion(model).attribute(
        image,
        sliding_window_shapes=(channels, params.window, params.window),
        strides=(channels, params.stride, params.stride),
        baselines=make_baseline("black", image),
        target=target,
        perturbations_per_eval=params.batch_size,
    )


@dataclass(frozen=True)
class Subject:
    """A model under measurement: its name in the table, its module and its forward pass."""

    name: str
    module: nn.Module
    forward: Forward


def measure(subject: Subject, image: torch.Tensor, methods: list[str], with_captum: bool) -> None:
    name, module, forward = subject.name, subject.module, subject.forward
    target = torch.tensor([0], device=image.device)
    occlusion, rise = OcclusionParams(), RiseParams()
    runs = {
        "occlusion": (occlusion_windows(image.shape[-1], occlusion) + 1, occlusion.batch_size),
        "rise": (rise.masks, rise.batch_size),
    }
    # Warm-up: first calls pay for allocation and kernel selection.
    explain("occlusion", module, image, target, {"window": 64, "stride": 64}, cam_layer="")
    alone: dict[str, float] = {}
    for method in methods:
        rows, batch_size = runs[method]
        map_s = seconds(explain, method, module, image, target, {}, cam_layer="", forward=forward)
        alone[method] = map_s
        passes_s = seconds(bare_passes, forward, image, rows, batch_size)
        line = (
            f"{name:<22} {method:<10} {rows:>5} passes  map {map_s:7.2f} s  "
            f"bare passes {passes_s:7.2f} s  map/passes {map_s / passes_s:5.2f}"
        )
        if method == "occlusion" and with_captum:
            captum_s = seconds(captum_occlusion, module, image, 0, occlusion)
            line += f"  captum {captum_s:7.2f} s  captum/ours {captum_s / map_s:5.2f}"
        print(line, flush=True)
    if len(alone) == len(METHODS):
        joint_s = seconds(
            explain_jointly,
            list(METHODS),
            module,
            image,
            target,
            [{}, {}],
            cam_layer="",
            forward=forward,
        )
        summed = sum(alone.values())
        print(
            f"{name:<22} {' + '.join(METHODS):<10} jointly {joint_s:7.2f} s  "
            f"alone, summed {summed:7.2f} s  jointly/alone {joint_s / summed:5.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: all"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: both"
    )
    parser.add_argument("--skip-captum", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads; one image, one target, defaults")

    gray = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)).to(device)
    if "demo" in args.models:
        demo = load_model(DEMO, device)
        measure(
            Subject("demo-lesions", demo.module, demo.forward_logits),
            gray,
            args.methods,
            not args.skip_captum,
        )
    if "demo-onnx" in args.models:
        with tempfile.TemporaryDirectory() as folder:
            twin = load_model(onnx_twin(Path(folder)), device)
            measure(
                Subject("demo-lesions (ONNX RT)", twin.module, twin.forward_logits),
                gray,
                args.methods,
                False,
            )
    if "resnet50" in args.models:
        model = calibrated_resnet50(device)
        rgb = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(batch)

        measure(
            Subject("resnet50 (random)", model, forward), rgb, args.methods, not args.skip_captum
        )


if __name__ == "__main__":
    main()
