"""How far Integrated Gradients' maps at the defaults are from a converged reference.

On the demo model (held-out demo-lesions images) and a random-weight torchvision ResNet-18
(BatchNorm calibrated on random data, 64 × 64 RGB noise images), each map is compared with the
map at 1,024 trapezoid steps, as max |map − reference| / range of the reference. Three rules:

- `gl-50`: 50 Gauss–Legendre nodes, no refinement (the quadrature and step count Captum uses);
- `gl-gap`: Gauss–Legendre, the steps doubled while the completeness gap exceeds 1 %, at most
  400 (the rule before the convergence figure);
- `defaults`: the service's method at its defaults (trapezoid on 50 intervals, refined while the
  completeness gap or the convergence figure, the map at n against n/2 steps, exceeds 1 %).

It prints, per model and rule, the median and largest deviation, the median completeness gap,
the mean steps and the time per map on this machine, then the ratio of the rules' largest
deviations. Run: `python -m bench.ig_convergence [--images N] [--models demo resnet18]
[--size S]`.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.harness import calibrated
from workers.demo.data import make_dataset
from workers.methods import Normalisation, explain
from workers.methods.base import input_gradient
from workers.methods.baselines import make_baseline
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
SIZE = 64
REFERENCE_STEPS = 1024
IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DEMO_NORMALISATION = Normalisation((0.5,), (0.25,))


@dataclass(frozen=True)
class Case:
    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    normalisation: Normalisation


@dataclass(frozen=True)
class Figures:
    deviations: list[float]
    gaps: list[float]
    steps: list[float]
    ms_per_map: float


def demo_case(images: int) -> Case:
    model = load_model(DEMO, torch.device("cpu")).module
    pixels, _, _ = make_dataset(images, seed=5_000_000)
    inputs = (torch.from_numpy(pixels)[:, None] - 0.5) / 0.25
    with torch.no_grad():
        targets = model(inputs).argmax(dim=1)
    return Case("demo-lesions", model, inputs, targets, DEMO_NORMALISATION)


def resnet_case(images: int, size: int = SIZE) -> Case:
    model = calibrated("resnet18", size, batches=3, batch_size=8)
    inputs = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = model(inputs).argmax(dim=1)
    return Case(f"resnet18 (random, {size}x{size})", model, inputs, targets, IMAGENET)


def service_maps(case: Case, params: dict[str, object]) -> tuple[torch.Tensor, dict]:
    result = explain(
        "integrated_gradients",
        case.model,
        case.inputs,
        case.targets,
        params,
        cam_layer="",
        normalisation=case.normalisation,
    )
    return result.values.double(), {k: v.tolist() for k, v in result.checks.items()}


def gauss_legendre_map(case: Case, row: int, steps: int) -> torch.Tensor:
    """Gauss–Legendre IG of one row, channel-summed, in float64 accumulation."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    inputs = case.inputs[row : row + 1]
    baseline = make_baseline("black", inputs, normalisation=case.normalisation)
    difference, target = inputs - baseline, case.targets[row]
    alphas = torch.tensor((nodes + 1) / 2, dtype=inputs.dtype).view(-1, 1, 1, 1)
    gradients = torch.cat(
        [
            input_gradient(case.model, baseline + chunk * difference, target.repeat(len(chunk)))
            for chunk in alphas.split(64)
        ]
    ).double()
    integral = (torch.tensor(weights / 2).view(-1, 1, 1, 1) * gradients).sum(dim=0, keepdim=True)
    return (difference.double() * integral).sum(dim=1)


def gl_rule(case: Case, *, max_steps: int) -> tuple[torch.Tensor, list[float], list[float]]:
    """Gauss–Legendre from 50 nodes, doubled while the completeness gap exceeds 1 %."""
    baselines = make_baseline("black", case.inputs, normalisation=case.normalisation)
    rows = torch.arange(len(case.targets))
    with torch.no_grad():
        change = (
            case.model(case.inputs)[rows, case.targets] - case.model(baselines)[rows, case.targets]
        ).double()
    maps, gaps, used = [], [], []
    for row in range(len(case.targets)):
        steps = 50
        while True:
            map_ = gauss_legendre_map(case, row, steps)
            gap = float((map_.sum() - change[row]).abs() / change[row].abs().clamp(min=1e-6))
            if gap <= 0.01 or 2 * steps > max_steps:
                break
            steps *= 2
        maps.append(map_)
        gaps.append(gap)
        used.append(float(steps))
    return torch.cat(maps), gaps, used


def deviations(maps: torch.Tensor, reference: torch.Tensor) -> list[float]:
    flat, ref = maps.flatten(1), reference.flatten(1)
    spans = ref.amax(dim=1) - ref.amin(dim=1)
    return ((flat - ref).abs().amax(dim=1) / spans).tolist()


def timed(run: Callable[[], tuple]) -> tuple[tuple, float]:
    started = time.perf_counter()
    answer = run()
    return answer, (time.perf_counter() - started) * 1000


def measure(case: Case) -> dict[str, Figures]:
    reference, _ = service_maps(case, {"steps": REFERENCE_STEPS, "max_steps": REFERENCE_STEPS})
    count = len(case.targets)
    figures = {}
    (maps, gaps, steps), ms = timed(lambda: gl_rule(case, max_steps=50))
    figures["gl-50"] = Figures(deviations(maps, reference), gaps, steps, ms / count)
    (maps, gaps, steps), ms = timed(lambda: gl_rule(case, max_steps=400))
    figures["gl-gap"] = Figures(deviations(maps, reference), gaps, steps, ms / count)
    (maps, checks), ms = timed(lambda: service_maps(case, {}))
    figures["defaults"] = Figures(
        deviations(maps, reference), checks["completeness_gap"], checks["steps"], ms / count
    )
    return figures


def report(case: Case, figures: dict[str, Figures]) -> None:
    print(f"\n{case.name}: {len(case.targets)} images, reference {REFERENCE_STEPS} trapezoid steps")
    header = ("median dev", "max dev", "median gap", "mean steps", "ms/map")
    print(f"{'rule':<10} " + " ".join(f"{name:>11}" for name in header))
    for rule, f in figures.items():
        print(
            f"{rule:<10} {statistics.median(f.deviations):>11.3%} {max(f.deviations):>11.3%} "
            f"{statistics.median(f.gaps):>11.3%} {statistics.fmean(f.steps):>11.1f} "
            f"{f.ms_per_map:>11.1f}"
        )
    worst = max(figures["defaults"].deviations)
    for rule in ("gl-50", "gl-gap"):
        print(f"largest deviation, {rule} / defaults: {max(figures[rule].deviations) / worst:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per model")
    parser.add_argument("--models", nargs="+", default=["demo", "resnet18"])
    parser.add_argument("--size", type=int, default=SIZE, help="the ResNet's input side")
    args = parser.parse_args()
    cases = {
        "demo": lambda: demo_case(args.images),
        "resnet18": lambda: resnet_case(args.images, args.size),
    }
    for name in args.models:
        case = cases[name]()
        report(case, measure(case))


if __name__ == "__main__":
    main()
