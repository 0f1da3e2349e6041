"""What sharing passes saves, in-process, on one batch: the gradient methods as the worker runs
them now (the shared-pass planner, `workers.methods.passes`: the predictions from the first
method's forward, one forward and backward per rule for the whole request) against the way it ran
them before (a prediction forward, then each method's own forward and backward), and the bare
passes' floor.

For each single-pass method: maps per second before and after, after / floor (forward + input
gradient), and Captum's maps per second as its user calls it (a forward for the top-1 targets,
then the method) with after / Captum. Then a request of gradcam + saliency + guided_gradcam
against guided_gradcam alone and against the three alone. Every figure is a median of
`--repeats` runs in this one process, so the ratios compare like with like on a shared machine.

    python -m bench.shared_passes [--model resnet50|densenet121|resnet18] [--size 224] [--batch 8]
"""

import argparse
from typing import Any

import torch
from captum import attr as captum_attr
from torch import nn

from bench.harness import CAM_LAYERS, calibrated, median_seconds
from workers.methods import explain, get_method, resolve
from workers.methods.base import input_gradient
from workers.methods.passes import PassMethod, run_passes
from workers.precision import PRECISIONS, computing

SINGLE = ["gradcam", "saliency", "guided_backprop", "guided_gradcam"]
TRIO = ["gradcam", "saliency", "guided_gradcam"]


class Bench:
    def __init__(self, model: nn.Module, inputs: torch.Tensor, layer: str) -> None:
        self.model, self.inputs, self.layer = model, inputs, layer

    def top1(self, logits: torch.Tensor) -> list[list[int]]:
        return [[int(c)] for c in logits.argmax(1)]

    def before(self, methods: list[str]) -> None:
        """A prediction forward, then each method alone."""
        with torch.no_grad():
            targets = self.model(self.inputs).argmax(1)
        for method in methods:
            explain(method, self.model, self.inputs, targets, {}, cam_layer=self.layer)

    def after(self, methods: list[str]) -> None:
        """The planner: the methods' shared passes, the targets from their first forward."""
        planned: list[tuple[PassMethod[Any], Any]] = []
        for method in methods:
            implementation = get_method(method)
            assert isinstance(implementation, PassMethod)
            planned.append((implementation, resolve(method, {}, cam_layer=self.layer)))
        run_passes(self.model, self.inputs, planned, self.top1, self.layer)

    def captum(self, method: str) -> None:
        """Captum as its user calls it: a forward for the top-1 targets, then the method."""
        with torch.no_grad():
            targets = self.model(self.inputs).argmax(1).tolist()
        layer = self.model.get_submodule(self.layer)
        attribution = {
            "gradcam": lambda: captum_attr.LayerGradCam(self.model, layer),
            "saliency": lambda: captum_attr.Saliency(self.model),
            "guided_backprop": lambda: captum_attr.GuidedBackprop(self.model),
            "guided_gradcam": lambda: captum_attr.GuidedGradCam(self.model, layer),
        }[method]()
        attribution.attribute(self.inputs.clone().requires_grad_(True), target=targets)

    def forward(self) -> None:
        with torch.no_grad():
            self.model(self.inputs)

    def forward_input_gradient(self) -> None:
        targets = torch.zeros(self.inputs.shape[0], dtype=torch.int64, device=self.inputs.device)
        input_gradient(self.model, self.inputs, targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(CAM_LAYERS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=sorted(PRECISIONS))
    args = parser.parse_args(argv)
    torch.manual_seed(1)
    device = torch.device(args.device)
    model = calibrated(args.model, args.size).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    inputs = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with computing(device, args.precision):
        report(args, model, inputs)


def report(args: argparse.Namespace, model: nn.Module, inputs: torch.Tensor) -> None:
    bench = Bench(model, inputs, CAM_LAYERS[args.model])
    n, repeats = args.batch, args.repeats
    print(
        f"{args.model} at {args.size}², batches of {n}, median of {repeats}, {inputs.device}, "
        f"{args.precision}, torch threads {torch.get_num_threads()}"
    )
    forward = n / median_seconds(bench.forward, repeats)
    floor = n / median_seconds(bench.forward_input_gradient, repeats)
    print(f"floor: forward {forward:.2f} maps/s, forward + input gradient {floor:.2f} maps/s")
    print(
        f"{'method':<16} {'before':>8} {'after':>8} {'after/before':>13} {'after/floor':>12} "
        f"{'captum':>8} {'after/captum':>13}"
    )
    for method in SINGLE:
        before = n / median_seconds(lambda m=method: bench.before([m]), repeats)
        after = n / median_seconds(lambda m=method: bench.after([m]), repeats)
        captum = n / median_seconds(lambda m=method: bench.captum(m), repeats)
        print(
            f"{method:<16} {before:8.2f} {after:8.2f} {after / before:13.2f} "
            f"{after / floor:12.2f} {captum:8.2f} {after / captum:13.2f}"
        )
    trio = median_seconds(lambda: bench.after(TRIO), repeats)
    alone = median_seconds(lambda: bench.after(["guided_gradcam"]), repeats)
    three_alone = median_seconds(lambda: bench.before(TRIO), repeats)
    print(
        f"{' + '.join(TRIO)} in one request: {trio:.3f} s per batch; "
        f"guided_gradcam alone {alone:.3f} s (ratio {trio / alone:.2f}, target <= 1.3); "
        f"the three alone as before {three_alone:.3f} s (ratio {trio / three_alone:.2f})"
    )


if __name__ == "__main__":
    main()
