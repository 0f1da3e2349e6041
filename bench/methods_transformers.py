"""Time per map of every method that applies to a vision transformer, and the refusals.

Models, random weights with a small random head: torchvision's ViT-B/16 at 224 × 224 (a 14 × 14
patch grid; `--size` changes it) and Swin-T at the same size, and the tests' DeiT-style tiny ViT
(16 × 24). One image, one target, each method at its defaults (as the API runs it), on the
model's default CAM layer; the median of `--repeats` runs after one warm-up. Each refused method
is printed with its reason. CPU unless `--device` says otherwise.

    PYTHONPATH=.:tests/integration python bench/methods_transformers.py --size 64
"""

import argparse
import statistics
import time

import torch
from torch import nn
from torchvision.models import swin_t, vit_b_16
from transformer_models import build_tiny_deit  # type: ignore[import-not-found]

from workers.methods import METHODS, explain, unsupported_methods
from workers.methods.cam_layers import default_cam_layer, find_cam_layers


def small_head(head: nn.Linear) -> None:
    with torch.no_grad():
        head.weight.normal_(std=0.05)
        head.bias.zero_()


def models(size: int) -> dict[str, tuple[nn.Module, tuple[int, int]]]:
    torch.manual_seed(0)
    vit = vit_b_16(weights=None, image_size=size, num_classes=10)
    small_head(vit.heads.head)
    swin = swin_t(weights=None, num_classes=10)
    small_head(swin.head)
    return {
        f"vit_b_16 {size}²": (vit, (size, size)),
        f"swin_t {size}²": (swin, (size, size)),
        "tiny DeiT 16×24": (build_tiny_deit(), (16, 24)),
    }


def time_method(
    method: str, model: nn.Module, image: torch.Tensor, layer: str, repeats: int
) -> float:
    target = torch.tensor([1], device=image.device)
    explain(method, model, image, target, {}, cam_layer=layer)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explain(method, model, image, target, {}, cam_layer=layer)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="*", default=sorted(METHODS))
    args = parser.parse_args()
    device = torch.device(args.device)
    for name, (model, (height, width)) in models(args.size).items():
        model = model.eval().requires_grad_(False).to(device)
        image = torch.randn(1, 3, height, width, device=device)
        layers = find_cam_layers(model, torch.zeros_like(image))
        layer = default_cam_layer(model, torch.zeros_like(image), layers)
        refused = unsupported_methods(model)
        print(
            f"\n{name}: default CAM layer {layer} ({layers[layer].kind}, grid {layers[layer].grid})"
        )
        for method in args.methods:
            if method in refused:
                print(f"  {method:22s} refused: {refused[method]}")
                continue
            seconds = time_method(method, model, image, layer, args.repeats)
            print(f"  {method:22s} {seconds * 1000:10.1f} ms per map")


if __name__ == "__main__":
    main()
