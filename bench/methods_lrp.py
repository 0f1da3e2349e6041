"""LRP: time per map, and conservation of the target logit per model and path.

Timing, for each model (one image, one target) and composite: the first call (which builds the
cached BatchNorm-folded canonical form), the median of later calls, the bare cost of a forward +
input gradient with the ratio LRP / bare in wall time and in CPU time (steadier on a busy
machine), and Captum's LRP (ε rule) on the same model with the ratio Captum / ours (ε).
Models: the demo model (128 x 128 grayscale) and torchvision's ResNet-50 (random weights,
calibrated BatchNorm, 224 x 224).

Conservation: with biases and BatchNorm shifts zeroed and ε = 1e-9, |Σ relevance − logit| / |logit|
(the largest over two images, 64 x 64) on the demo model, ResNet-50 and DenseNet-121, each as a
PyTorch module and through ONNX (TorchScript export, opset 17, converted by onnx2torch); and, as
a contrast, Captum's LRP on the zero-bias ResNet-50, which does not split relevance at residual
sums.
"""

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from captum.attr import LRP as CaptumLrp
from torch import nn
from torchvision.models import densenet121, resnet50

from schemas.methods.lrp import LrpParams
from workers.methods import explain
from workers.methods.base import input_gradient
from workers.methods.lrp import lrp_relevance
from workers.onnx_models import convert_to_torch
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
REPEATS = 3
COMPOSITES = [("epsilon_plus", "zbox"), ("epsilon", "same"), ("alpha_beta", "zbox")]


def calibrated(build: Callable[..., nn.Module], size: int) -> nn.Module:
    """A torchvision network with random weights; BatchNorm statistics from random data."""
    torch.manual_seed(0)
    model = build(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, size, size))
    return model.eval().requires_grad_(False)


def without_biases(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
                module.running_mean.zero_()
                module.bias.zero_()
    return model


def through_onnx(model: nn.Module, channels: int, size: int, folder: Path) -> nn.Module:
    file = folder / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, channels, size, size),),
        file,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    return convert_to_torch(onnx.load(file)).requires_grad_(False)


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def median_seconds(run: Callable[[], object]) -> float:
    return statistics.median(seconds(run) for _ in range(REPEATS))


def median_cpu_seconds(run: Callable[[], object]) -> float:
    """The process's CPU time (all threads) per call: steadier than wall time on a busy machine,
    most of all with one thread."""

    def once() -> float:
        started = time.process_time()
        run()
        return time.process_time() - started

    return statistics.median(once() for _ in range(REPEATS))


def captum_sum_error(model: nn.Module, image: torch.Tensor, target: int) -> float:
    """|Σ relevance − logit| / |logit| of Captum's LRP (its default ε rule)."""
    relevance = CaptumLrp(copy.deepcopy(model)).attribute(image, target=target).detach()
    with torch.no_grad():
        logit = float(model(image)[0, target])
    return abs(float(relevance.double().sum()) - logit) / abs(logit)


def bench_timing(name: str, model: nn.Module, image: torch.Tensor) -> None:
    target = torch.tensor([1], device=image.device)
    bare = median_seconds(lambda: input_gradient(model, image, target))
    bare_cpu = median_cpu_seconds(lambda: input_gradient(model, image, target))
    print(
        f"\n{name}: image {tuple(image.shape)}, forward + input gradient {bare * 1e3:.1f} ms "
        f"(cpu {bare_cpu * 1e3:.1f} ms)"
    )
    per_map = {}
    for composite, first_layer in COMPOSITES:
        params: dict[str, object] = {"composite": composite, "first_layer": first_layer}

        def run(params: dict[str, object] = params) -> object:
            return explain("lrp", model, image, target, params, cam_layer="unused")

        first = seconds(run)
        then = per_map[composite] = median_seconds(run)
        cpu = median_cpu_seconds(run)
        print(
            f"  {composite:12s} + {first_layer:4s} first {first * 1e3:8.1f} ms  "
            f"then {then * 1e3:7.1f} ms/map  lrp/bare {then / bare:5.2f}  "
            f"cpu {cpu * 1e3:7.1f} ms  cpu lrp/bare {cpu / bare_cpu:5.2f}"
        )
    captum_copy = copy.deepcopy(model)
    theirs = median_seconds(lambda: CaptumLrp(captum_copy).attribute(image, target=1))
    ratio = theirs / per_map["epsilon"]
    print(f"  captum LRP (ε) {theirs * 1e3:7.1f} ms/map  captum/ours(ε) {ratio:5.2f}")


def bench_conservation(folder: Path) -> None:
    size = 64
    print(f"\nconservation, zero biases, ε = 1e-9, {size} x {size}: |Σ R − logit| / |logit|")
    demo = load_model(DEMO, torch.device("cpu")).module
    networks = {
        "demo": (demo, 1),
        "resnet50": (calibrated(resnet50, size), 3),
        "densenet121": (calibrated(densenet121, size), 3),
    }
    generator = torch.Generator().manual_seed(1)
    targets = torch.tensor([0, 2])
    for name, (model, channels) in networks.items():
        zero_bias = without_biases(model)
        pixels = torch.rand(2, channels, size, size, generator=generator)
        images = (pixels - 0.45) / 0.25
        paths = {"torch": zero_bias, "onnx": through_onnx(zero_bias, channels, size, folder)}
        for path, module in paths.items():
            with torch.no_grad():
                logits = module(images).gather(1, targets[:, None])[:, 0].double()
            for composite, first_layer in COMPOSITES[:2]:
                relevance = lrp_relevance(
                    module,
                    images,
                    targets,
                    LrpParams.model_validate(
                        {"composite": composite, "first_layer": first_layer, "epsilon": 1e-9}
                    ),
                )
                error = (relevance.double().sum(dim=(1, 2, 3)) - logits).abs() / logits.abs()
                print(
                    f"  {name:12s} {path:5s} {composite:12s} + {first_layer:4s} "
                    f"{float(error.max()):.2e}"
                )
        if name == "resnet50":
            error = captum_sum_error(zero_bias, images[:1], 0)
            print(f"  {name:12s} torch captum LRP (ε, contrast) {error:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-conservation", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, median of {REPEATS} calls")

    generator = torch.Generator().manual_seed(0)
    demo = load_model(DEMO, device)
    bench_timing("demo", demo.module, torch.randn(1, 1, 128, 128, generator=generator).to(device))
    image = torch.randn(1, 3, 224, 224, generator=generator).to(device)
    bench_timing("resnet50", calibrated(resnet50, 224).to(device), image)

    if not args.skip_conservation:
        with tempfile.TemporaryDirectory() as folder:
            bench_conservation(Path(folder))


if __name__ == "__main__":
    main()
