"""Time per map of every method on segmentation networks, with their default parameters.

For each model, one image and one target (the class predicted on most pixels, over its
predicted region): each method's time for one map, and its ratio to one forward pass of the
network. The region head (`workers.segmentation`) is timed on its own: a saliency map through it
against the plain gradient of the same region score, computed directly. Models, random weights
with calibrated BatchNorm: torchvision's DeepLabV3-MobileNetV3 (3 × `--size`², 21 classes) and
MONAI's 2-D UNet (1 × `--size`², 3 classes). CPU unless `--device` says otherwise; `--models`
and `--methods` pick a subset. A method the network does not support is listed with the reason.
"""

import argparse
import time
from collections.abc import Callable

import torch
from monai.networks.nets import UNet
from torch import nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from workers import segmentation
from workers.methods import explain
from workers.methods.registry import METHODS, get_method

MODELS = ("deeplabv3-mobilenet", "monai-unet")


def calibrated(network: nn.Module, channels: int, size: int) -> nn.Module:
    """Random weights; BatchNorm statistics from random data keep the logits sane."""
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.randn(4, channels, size, size))
    return network.eval().requires_grad_(False)


def networks(size: int) -> dict[str, tuple[nn.Module, int, str]]:
    """Each model: the network answering a tensor, its channels, its CAM layer."""
    torch.manual_seed(0)
    deeplab = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    unet = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=3,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
        act="RELU",
        norm="BATCH",
    )
    return {
        "deeplabv3-mobilenet": (
            segmentation.select_output(calibrated(deeplab, 3, size), "out"),
            3,
            "backbone.16",
        ),
        "monai-unet": (calibrated(unet, 1, size), 1, "model.1"),
    }


def seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` runs, after one warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def bench_model(
    name: str, network: nn.Module, channels: int, layer: str, args: argparse.Namespace
) -> None:
    device = torch.device(args.device)
    network = network.to(device)
    inputs = torch.randn(
        1, channels, args.size, args.size, generator=torch.Generator().manual_seed(1)
    ).to(device)
    with torch.no_grad():
        logits = network(inputs)
    predicted = logits.argmax(dim=1)[0]
    category = int(predicted.flatten().mode().values)
    mask = (predicted == category).float()
    batch = segmentation.region_batch(
        network, network, [segmentation.Region(category, "predicted", mask)]
    )
    forward_s = seconds(lambda: network(inputs))
    print(
        f"\n{name}: {channels} x {args.size} x {args.size}, one forward {forward_s * 1000:.1f} ms"
    )

    def direct_gradient() -> torch.Tensor:
        leaf = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            score = (network(leaf)[0, category] * mask).sum()
            return torch.autograd.grad(score, leaf)[0]

    def through_head() -> object:
        region = segmentation.region_batch(
            network, network, [segmentation.Region(category, "predicted", mask)]
        )
        return explain(
            "saliency",
            region.model,
            inputs,
            region.targets,
            {"abs": False},
            cam_layer=layer,
            forward=region.forward,
        )

    direct_s, head_s = seconds(direct_gradient), seconds(through_head)
    print(
        f"  region head: saliency {head_s * 1000:.1f} ms, direct gradient "
        f"{direct_s * 1000:.1f} ms, ratio {head_s / direct_s:.2f}"
    )
    print(f"  {'method':22s} {'ms per map':>11s} {'x forward':>10s}")
    for method in args.methods:
        refusal = get_method(method).refusal(network)
        if refusal is not None:
            print(f"  {method:22s} refused: {refusal}")
            continue

        def run(method: str = method) -> object:
            return explain(
                method,
                batch.model,
                inputs,
                batch.targets,
                {},
                cam_layer=layer,
                forward=batch.forward,
                probability=batch.probability,
            )

        took = seconds(run, repeats=1)
        print(f"  {method:22s} {took * 1000:11.1f} {took / forward_s:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for name, (network, channels, layer) in networks(args.size).items():
        if name in args.models:
            bench_model(name, network, channels, layer, args)


if __name__ == "__main__":
    main()
