"""Time per map of `gradcam`, `cam`, `gradcam_pp`, `scorecam`, `saliency`, `smoothgrad` and
`integrated_gradients` with their default parameters.

For each model, one image, one target: the method's time next to the bare cost of its passes
(a forward, or a forward and an input gradient, in the same number of rows), and for
gradcam, saliency, integrated_gradients and smoothgrad Captum's `LayerGradCam`, `Saliency`,
`IntegratedGradients` and `NoiseTunnel(Saliency)`
with the same settings (for integrated_gradients, the steps its refinement reached), with the
ratio Captum / ours and the largest difference of the maps
(relative to the map's range; SmoothGrad's noise differs, so its maps differ by the noise). Also
the completeness gap of integrated_gradients, |Σ map − (f(x) − f(x0))| / |f(x) − f(x0)|.
Models: the demo model (128 x 128 grayscale) and torchvision's ResNet-50 with random weights and
calibrated BatchNorm (224 x 224). CPU unless `--device` says otherwise; `--models` and `--methods`
pick a subset.
"""

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from torch import nn
from torchvision.models import resnet50

from schemas.methods.integrated_gradients import IntegratedGradientsParams
from schemas.methods.scorecam import ScoreCamParams
from schemas.methods.smoothgrad import SmoothGradParams
from workers.demo.data import make_sample
from workers.methods import explain
from workers.methods.base import copies_per_pass, input_gradient
from workers.methods.baselines import make_baseline
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
MODELS = ("demo", "resnet50")
METHODS = (
    "gradcam",
    "cam",
    "gradcam_pp",
    "scorecam",
    "saliency",
    "smoothgrad",
    "integrated_gradients",
)
T = TypeVar("T")


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


def timed(run: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The fastest of `repeats` calls in seconds, and the last call's result."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    span = float(expected.max() - expected.min())
    return float((actual - expected).abs().max()) / span


class Bench:
    """One model, one image and its top class: each method's time and what to compare it with."""

    def __init__(self, model: nn.Module, image: torch.Tensor, cam_layer: str, repeats: int):
        self.model = model
        self.image = image
        self.cam_layer = cam_layer
        self.checks: dict[str, float] = {}
        self.repeats = repeats
        with torch.no_grad():
            self.target = model(image).argmax(dim=1)
        # Warm: the first pass of the largest batch takes its memory from the system, and CAM
        # traces the model once (as `available_methods` does when a worker loads it).
        self.gradient(image.expand(copies_per_pass(image), -1, -1, -1))
        self.ours("cam")

    def ours(self, method: str) -> torch.Tensor:
        result = explain(method, self.model, self.image, self.target, {}, cam_layer=self.cam_layer)
        self.checks = {name: float(values[0]) for name, values in result.checks.items()}
        return result.values

    def forward(self, batch: torch.Tensor) -> None:
        with torch.no_grad():
            self.model(batch)

    def gradient(self, batch: torch.Tensor) -> None:
        input_gradient(self.model, batch, self.target.expand(batch.shape[0]))

    def rows_ms(self, pass_: Callable[[torch.Tensor], None], rows: int, per_pass: int) -> float:
        """`rows` copies of the image through `pass_`, `per_pass` rows at a time, in ms."""

        def run() -> None:
            for start in range(0, rows, per_pass):
                # Real copies: an expanded (stride 0) batch makes the passes cheaper.
                pass_(self.image.repeat(min(per_pass, rows - start), 1, 1, 1))

        return 1000 * timed(run, self.repeats)[0]

    def line(self, method: str) -> str:
        seconds, values = timed(partial(self.ours, method), self.repeats)
        ms = 1000 * seconds
        compare: Callable[[float, torch.Tensor], str] = getattr(self, f"compare_{method}")
        return f"{ms:10.1f} ms/map   {compare(ms, values)}"

    def compare_gradcam(self, ms: float, values: torch.Tensor) -> str:
        bare = self.rows_ms(self.gradient, 1, 1)
        layer = self.model.get_submodule(self.cam_layer)

        def captum() -> torch.Tensor:
            attribution = LayerGradCam(self.model, layer).attribute(
                self.image, target=int(self.target), relu_attributions=True
            )
            size = tuple(self.image.shape[2:])
            upsampled = LayerAttribution.interpolate(attribution, size, interpolate_mode="bilinear")
            return upsampled[:, 0].detach()

        captum_seconds, captum_values = timed(captum, self.repeats)
        captum_ms = 1000 * captum_seconds
        return (
            f"1 forward+backward to the input {bare:.1f} ms, ratio {ms / bare:.2f}; "
            f"Captum {captum_ms:.1f} ms, Captum/ours {captum_ms / ms:.2f}, "
            f"max |ours - Captum| {relative_difference(values, captum_values):.1e} of range"
        )

    def compare_saliency(self, ms: float, values: torch.Tensor) -> str:
        bare = self.rows_ms(self.gradient, 1, 1)

        def captum() -> torch.Tensor:
            image = self.image.clone().requires_grad_(True)
            gradient = Saliency(self.model).attribute(image, target=int(self.target), abs=True)
            return gradient.amax(dim=1).detach()

        captum_seconds, captum_values = timed(captum, self.repeats)
        captum_ms = 1000 * captum_seconds
        return (
            f"1 forward+backward {bare:.1f} ms, ratio {ms / bare:.2f}; "
            f"Captum {captum_ms:.1f} ms, Captum/ours {captum_ms / ms:.2f}, "
            f"max |ours - Captum| {relative_difference(values, captum_values):.1e} of range"
        )

    def compare_cam(self, ms: float, _values: torch.Tensor) -> str:
        bare = self.rows_ms(self.forward, 1, 1)
        return f"1 forward {bare:.1f} ms, ratio {ms / bare:.2f}"

    def compare_gradcam_pp(self, ms: float, _values: torch.Tensor) -> str:
        bare = self.rows_ms(self.gradient, 1, 1)
        return f"1 forward+backward {bare:.1f} ms, ratio {ms / bare:.2f}"

    def compare_scorecam(self, ms: float, _values: torch.Tensor) -> str:
        rows = _layer_channels(self.model, self.image, self.cam_layer) + 2
        bare = self.rows_ms(self.forward, rows, ScoreCamParams().batch_size)
        return f"{rows} forward rows {bare:.1f} ms, ratio {ms / bare:.2f}"

    def compare_smoothgrad(self, ms: float, values: torch.Tensor) -> str:
        params = SmoothGradParams()
        bare = self.rows_ms(self.gradient, params.samples, copies_per_pass(self.image))
        sigma = params.noise * float(self.image.max() - self.image.min())
        tunnel = NoiseTunnel(Saliency(self.model))

        def captum() -> torch.Tensor:
            attributions = tunnel.attribute(
                self.image.clone().requires_grad_(True),
                nt_type="smoothgrad",
                nt_samples=params.samples,
                stdevs=sigma,
                target=int(self.target),
                abs=True,
            )
            return attributions.amax(dim=1).detach()

        captum_seconds, captum_values = timed(captum, self.repeats)
        captum_ms = 1000 * captum_seconds
        return (
            f"{params.samples} forward+backward {bare:.1f} ms, ratio {ms / bare:.2f}; "
            f"Captum NoiseTunnel {captum_ms:.1f} ms, Captum/ours {captum_ms / ms:.2f}, "
            f"max |ours - Captum| {relative_difference(values, captum_values):.1e} of range "
            "(other noise draws)"
        )

    def compare_integrated_gradients(self, ms: float, values: torch.Tensor) -> str:
        # The steps refinement reached at the defaults; Captum gets as many intervals of its
        # trapezoid rule (steps + 1 points), its map rescaled by n / (n − 1): its weights 1/n
        # sum to (n − 1)/n.
        steps = int(self.checks["steps"])
        bare = self.rows_ms(self.gradient, steps + 1, copies_per_pass(self.image))
        baseline = make_baseline("black", self.image)
        gradients = IntegratedGradients(self.model)

        def captum() -> torch.Tensor:
            attributions = gradients.attribute(
                self.image,
                baselines=baseline,
                target=int(self.target),
                n_steps=steps + 1,
                method="riemann_trapezoid",
            )
            return attributions.sum(dim=1).detach() * (steps + 1) / steps

        captum_seconds, captum_values = timed(captum, self.repeats)
        captum_ms = 1000 * captum_seconds
        with torch.no_grad():
            logits = self.model(torch.cat([self.image, baseline]))[:, int(self.target)]
        change = float(logits[0] - logits[1])
        gap = abs(float(values.sum()) - change) / abs(change)
        first = IntegratedGradientsParams().steps
        return (
            f"{first} steps refined to {steps}; "
            f"{steps} forward+backward {bare:.1f} ms, ratio {ms / bare:.2f}; "
            f"Captum {captum_ms:.1f} ms, Captum/ours {captum_ms / ms:.2f}, "
            f"max |ours - Captum| {relative_difference(values, captum_values):.1e} of range; "
            f"completeness gap {gap:.2%}"
        )


def report(name: str, bench: Bench, methods: list[str]) -> None:
    for method in methods:
        print(f"{name:9s} {method:21s} {bench.line(method)}", flush=True)


def _layer_channels(model: nn.Module, image: torch.Tensor, layer: str) -> int:
    outputs: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _module, _args, output: outputs.append(output)
    )
    try:
        with torch.no_grad():
            model(image)
    finally:
        handle.remove()
    return outputs[0].shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if "demo" in args.models:
        loaded = load_model(DEMO, device)
        spec = loaded.manifest.input
        pixels = torch.from_numpy(make_sample(21).image)[None, None].to(device)
        image = (pixels - spec.mean[0]) / spec.std[0]
        report("demo", Bench(loaded.module, image, loaded.default_cam_layer, 5), args.methods)
    if "resnet50" in args.models:
        model = calibrated_resnet50(device)
        image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        report("resnet50", Bench(model, image.to(device), "layer4", 1), args.methods)


if __name__ == "__main__":
    main()
