"""Time activation maximisation on CPU: the demo model (its three classes in one batch) and
torchvision's ResNet-50 (random weights, BatchNorm calibrated) at 224×224.

Prints the time per visualisation, the activation reached and the class probability the model
gives the returned (uint8) image. Run: `python -m bench.visualize`.
"""

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from bench.harness import calibrated
from schemas.models import InputSpec
from schemas.visualizations import VisualizationParams
from workers.repository import load_model
from workers.visualize import Visualization, visualize

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
IMAGENET = InputSpec(
    channels=3, height=224, width=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
)


def calibrated_resnet50() -> nn.Module:
    return calibrated("resnet50", 64, batches=3, batch_size=8)


def report(name: str, requests: list[VisualizationParams], results: list[Visualization]) -> None:
    for request, result in zip(requests, results, strict=True):
        probability = "-" if result.probability is None else f"{result.probability:.4f}"
        print(
            f"{name:10s} target={request.target!s:4s} steps={request.steps} "
            f"size={result.image.shape[1]}×{result.image.shape[0]} "
            f"activation={result.activation:9.3f} probability={probability} "
            f"per visualisation={result.compute_ms / 1000:6.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=VisualizationParams(target=0).steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    demo = load_model(ROOT / "models" / "demo-lesions" / "1", CPU)
    requests = [VisualizationParams(target=c, steps=args.steps, seed=args.seed) for c in range(3)]
    started = time.perf_counter()
    results = visualize(demo.module, demo.manifest.input, requests, device=CPU)
    print(f"demo: 3 classes in one batch, {time.perf_counter() - started:.1f} s wall")
    report("demo", requests, results)

    if not args.skip_resnet:
        model = calibrated_resnet50()
        requests = [VisualizationParams(target=7, steps=args.steps, seed=args.seed)]
        results = visualize(model, IMAGENET, requests, device=CPU)
        report("resnet50", requests, results)


if __name__ == "__main__":
    main()
