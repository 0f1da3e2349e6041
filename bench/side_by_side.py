"""The whole service against the attribution libraries, side by side, in one run (SPEC §9).

For each model (`--models`: torchvision ResNet-50 and DenseNet-121 at `--size`², seeded random
weights with BatchNorm calibrated, served from a safetensors + factory folder in a temporary model
repository; and the shipped demo model) and `--images` distinct images:

1. Per method, the whole service at saturation: a private stack (its own Redis, the gateway, one
   worker; result cache off) that `--clients` concurrent clients keep busy, each image sent once
   (`POST /v1/explanations`, no overlay, scores "none"), after a warm-up; maps per second of wall
   time. Against it, each library called in this process on batches of 8 as its user calls it: a
   forward for the top-1 targets first, then the attribution (pytorch-grad-cam picks the top-1
   target from its own forward). Captum 0.9 (LayerGradCam, Saliency, GuidedGradCam,
   NoiseTunnel(Saliency), IntegratedGradients, DeepLift, LRP), pytorch-grad-cam 1.5.7 (GradCAM)
   and zennit (the EpsilonPlus composite with its Gradient attributor). A library that refuses a
   model is printed with its reason. The last column is the service over the best library.
2. The bare passes' floor, in this process at batch 8: forward, and forward + input gradient;
   each single-pass method's service time per map over the floor's.
3. A request of gradcam + saliency + guided_gradcam through the service against guided_gradcam
   alone and against the three alone (the sum of their times).
4. The worker's peak and current resident memory (VmHWM, VmRSS) after the model's runs.
5. Throughput with 1 and with 2 workers (`--scaling` methods) and the ratio.

The parameters are the same on both sides; where the definitions differ:
- saliency: the service's map is the max over channels of |gradient|; Captum returns |gradient|
  per channel (the reduction is not timed separately; it is small).
- smoothgrad: 10 samples, σ = 0.15 (the service's default) × the normalised input's range. The
  service takes each image's range; Captum's NoiseTunnel takes one σ per input tensor, here 0.15
  × the batch's mean range. Both pass as many noisy copies at once as the service's pass budget.
- integrated_gradients: 20 intervals from black (steps = max_steps = 20, no refinement), the
  trapezoid rule on 21 points; Captum runs `riemann_trapezoid` with n_steps=21, chunked as the
  service's passes. The service also runs the prediction forward (its completeness check reads
  the path's end points).
- deeplift: from the black baseline; Captum refuses models that reuse an activation module.
- lrp: ε+ (z+ on convolutions, ε = 1e-6 on dense layers) with the same rule at the first layer
  (the service's `first_layer: "same"`, zennit's EpsilonPlus); the service folds BatchNorm and
  splits residual sums; zennit gets its ResNet canonizer (ResNets), its BatchNorm-merging one
  (the demo model) or none (DenseNet-121, whose BatchNorm precedes its convolutions);
  Captum's LRP gets z+ (Alpha1_Beta0) on convolutions and ε on the rest, has no canonizer and does
  not conserve relevance across residual sums.

Everything shares this machine's cores: the gateway, Redis and the clients take CPU the worker
would otherwise have.

    python -m bench.side_by_side [--models resnet50 densenet121 demo-lesions] [--methods ...]
        [--images 16] [--clients 16] [--size 224] [--smoke]
"""

import argparse
import asyncio
import base64
import copy
import io
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum import attr as captum_attr
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
from PIL import Image
from pytorch_grad_cam import GradCAM
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus
from zennit.torchvision import ResNetCanonizer

from bench.harness import (
    CAM_LAYERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    calibrated,
    median_seconds,
    send_all,
    write_torchvision_model,
)
from bench.shared_passes import TRIO, Bench
from schemas import keys
from schemas.methods.smoothgrad import SmoothGradParams
from service.devstack import DevStack, free_port
from service.redis_connection import sync_redis
from workers.demo.data import make_sample, to_png_bytes
from workers.methods.base import Normalisation, copies_per_pass
from workers.methods.baselines import make_baseline
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = "demo-lesions"
BATCH = 8
METHODS = [
    "gradcam",
    "saliency",
    "guided_gradcam",
    "smoothgrad",
    "integrated_gradients",
    "deeplift",
    "lrp",
]
SINGLE_PASS = ("gradcam", "saliency", "guided_gradcam")
SAMPLES = 10
STEPS = 20
EPSILON = 1e-6
NOISE = SmoothGradParams.model_fields["noise"].default
SERVICE_PARAMS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": SAMPLES},
    "integrated_gradients": {"steps": STEPS, "max_steps": STEPS, "baseline": "black"},
    "deeplift": {"baseline": "black"},
    "lrp": {"composite": "epsilon_plus", "first_layer": "same", "epsilon": EPSILON},
}
Attribution = Callable[[torch.Tensor], object]
# zennit's canonizers for the models it has one for; DenseNet-121 runs without (its BatchNorm
# precedes the convolutions, so none merges it; the rules then pass its gradient).
ZENNIT_CANONIZERS: dict[str, Callable[[], Any]] = {
    "resnet18": ResNetCanonizer,
    "resnet50": ResNetCanonizer,
    DEMO: SequentialMergeBatchNorm,
}


@dataclass
class Subject:
    """One model as both sides see it: the module and its images, and its model repository."""

    name: str
    module: nn.Module
    layer: str
    normalisation: Normalisation
    pngs: list[bytes]
    repository: Path

    @property
    def inputs(self) -> torch.Tensor:
        """The PNGs as the worker reads them: pixels / 255, normalised per channel."""
        arrays = [np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) for png in self.pngs]
        pixels = torch.from_numpy(np.stack(arrays)) / 255
        pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        mean = torch.tensor(self.normalisation.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.normalisation.std).view(1, -1, 1, 1)
        return ((pixels - mean) / std).contiguous()


def torchvision_subject(name: str, size: int, images: int, repository: Path) -> Subject:
    model = calibrated(name, size)
    write_torchvision_model(repository, name, model, size)
    rng = np.random.default_rng(7)
    pngs = []
    for _ in range(images):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, mode="RGB").save(out, format="PNG")
        pngs.append(out.getvalue())
    normalisation = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
    return Subject(name, model, CAM_LAYERS[name], normalisation, pngs, repository)


def demo_subject(images: int, repository: Path) -> Subject:
    (repository / DEMO).symlink_to(ROOT / "models" / DEMO)
    loaded = load_model(ROOT / "models" / DEMO / "1", torch.device("cpu"))
    spec = loaded.manifest.input
    pngs = [to_png_bytes(make_sample(50_000 + i).image) for i in range(images)]
    normalisation = Normalisation(tuple(spec.mean), tuple(spec.std))
    return Subject(DEMO, loaded.module, loaded.default_cam_layer, normalisation, pngs, repository)


def top1(model: nn.Module, inputs: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(inputs).argmax(dim=1).tolist()


def captum_lrp(model: nn.Module) -> captum_attr.LRP:
    """Captum's LRP with z+ on convolutions and ε elsewhere, its nearest to ε+."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.rule = Alpha1_Beta0_Rule()  # type: ignore[assignment]
        elif isinstance(module, nn.Linear | nn.BatchNorm2d):
            module.rule = EpsilonRule(EPSILON)  # type: ignore[assignment]
    return captum_attr.LRP(model)


def zennit_lrp(model: nn.Module, name: str, inputs: torch.Tensor) -> torch.Tensor:
    targets = top1(model, inputs)
    canonizers = [ZENNIT_CANONIZERS[name]()] if name in ZENNIT_CANONIZERS else []
    composite = EpsilonPlus(epsilon=EPSILON, canonizers=canonizers)
    with torch.no_grad():
        classes = model(inputs[:1]).shape[1]
    one_hot = torch.eye(classes)[targets]
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(inputs, one_hot)
    return relevance


def pytorch_grad_cam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    # The model's parameters are frozen: the input carries the gradient the layer's hook needs.
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=inputs.clone().requires_grad_(True), targets=None)


def libraries(subject: Subject, method: str, model: nn.Module) -> dict[str, Attribution]:
    """Each library's way to compute `method` on a batch with `model`, as its user calls it."""
    layer = model.get_submodule(subject.layer)

    def black(inputs: torch.Tensor) -> torch.Tensor:
        return make_baseline("black", inputs, normalisation=subject.normalisation)

    def smoothgrad(inputs: torch.Tensor) -> object:
        spans = inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3))
        return captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
            inputs,
            nt_type="smoothgrad",
            nt_samples=SAMPLES,
            nt_samples_batch_size=copies_per_pass(inputs),
            stdevs=float(NOISE * spans.mean()),
            target=top1(model, inputs),
        )

    def integrated_gradients(inputs: torch.Tensor) -> object:
        return captum_attr.IntegratedGradients(model).attribute(
            inputs,
            baselines=black(inputs),
            target=top1(model, inputs),
            n_steps=STEPS + 1,
            method="riemann_trapezoid",
            internal_batch_size=copies_per_pass(inputs) * len(inputs),
        )

    def deeplift(inputs: torch.Tensor) -> object:
        return captum_attr.DeepLift(model).attribute(
            inputs, baselines=black(inputs), target=top1(model, inputs)
        )

    def captum(make: Callable[[], Any]) -> Attribution:
        return lambda inputs: make().attribute(inputs, target=top1(model, inputs))

    return {
        "gradcam": {
            "Captum LayerGradCam": captum(lambda: captum_attr.LayerGradCam(model, layer)),
            "pytorch-grad-cam GradCAM": lambda inputs: pytorch_grad_cam(model, layer, inputs),
        },
        "saliency": {"Captum Saliency": captum(lambda: captum_attr.Saliency(model))},
        "guided_gradcam": {
            "Captum GuidedGradCam": captum(lambda: captum_attr.GuidedGradCam(model, layer))
        },
        "smoothgrad": {"Captum NoiseTunnel(Saliency)": smoothgrad},
        "integrated_gradients": {"Captum IntegratedGradients": integrated_gradients},
        "deeplift": {"Captum DeepLift": deeplift},
        "lrp": {
            "Captum LRP": captum(lambda: captum_lrp(model)),
            "zennit EpsilonPlus": lambda inputs: zennit_lrp(model, subject.name, inputs),
        },
    }.get(method, {})


def library_rates(subject: Subject, method: str, inputs: torch.Tensor) -> dict[str, float | str]:
    """Each library's maps per second for `method`, or why it refused; each on its own copy of
    the model, since a library may leave hooks, rules or a failed canonization behind."""
    return {
        label: library_rate(
            libraries(subject, method, copy.deepcopy(subject.module))[label], inputs
        )
        for label in libraries(subject, method, subject.module)
    }


def library_rate(attribute: Attribution, inputs: torch.Tensor) -> float | str:
    """Maps per second over every image on batches of `BATCH`, after a warm-up on the first
    batch; or why the library refused. The libraries' warnings are not printed."""
    batches = list(inputs.split(BATCH))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attribute(batches[0])
            started = time.perf_counter()
            for batch in batches:
                attribute(batch)
            return len(inputs) / (time.perf_counter() - started)
    except Exception as error:  # noqa: BLE001 - a refusal is a figure of the table
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"


@dataclass
class Service:
    """The private stack serving one model, and the maps per second measured on it."""

    subject: Subject
    clients: int
    stack: DevStack
    rates: dict[tuple[str, ...], float] = field(default_factory=dict)

    def rate(self, methods: tuple[str, ...]) -> float:
        """Maps per second of requests for `methods` at saturation, after a warm-up."""
        request = {
            "model": self.subject.name,
            "methods": list(methods),
            "params": {m: SERVICE_PARAMS[m] for m in methods if m in SERVICE_PARAMS},
            "output": {"overlay": False, "scores": "none"},
        }
        images = [base64.b64encode(png).decode() for png in self.subject.pngs]
        asyncio.run(send_all(self.stack.url, request, images[:BATCH], self.clients))
        self.rates[methods] = asyncio.run(send_all(self.stack.url, request, images, self.clients))
        return self.rates[methods]

    def known_rate(self, methods: tuple[str, ...]) -> float:
        return self.rates[methods] if methods in self.rates else self.rate(methods)

    def add_worker(self, timeout_s: float = 120.0) -> None:
        """One more worker, once it serves the model."""
        self.stack.start_worker(len(self.workers()))
        assert self.stack.redis_url is not None
        redis = sync_redis(self.stack.redis_url)
        deadline = time.monotonic() + timeout_s
        try:
            while redis.zcard(keys.model_workers(self.subject.name)) < len(self.workers()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the second worker did not start serving")
                time.sleep(0.2)
        finally:
            redis.close()

    def workers(self) -> list[int]:
        return [p.pid for p in self.stack.processes if "workers.cli" in p.args]  # type: ignore[operator]


@contextmanager
def serving(subject: Subject, clients: int) -> Iterator[Service]:
    stack = DevStack(
        port=free_port(),
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MODEL_REPOSITORY": str(subject.repository),
            "GLIMPSE_RESULT_CACHE": "off",
        },
    )
    with stack.serving(timeout_s=300):
        yield Service(subject, clients, stack)


def memory_mib(pid: int) -> dict[str, float]:
    """VmHWM and VmRSS of process `pid`, in MiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmHWM", "VmRSS")}


def figure(value: float | str | None) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "—"


def compare(service: Service, methods: list[str], inputs: torch.Tensor) -> None:
    """The table of step 1, then the refusals."""
    names = ["Captum", "pytorch-grad-cam", "zennit"]
    print(f"| method | service maps/s | {' | '.join(names)} | best library | service / best |")
    print("|---|---|" + "---|" * len(names) + "---|---|")
    refusals = []
    for method in methods:
        rates = library_rates(service.subject, method, inputs)
        served = service.rate((method,))
        by_library = {
            name: [(k, v) for k, v in rates.items() if k.startswith(name)] for name in names
        }
        cells = [" / ".join(f"{figure(v)}" for _, v in by_library[name]) or "—" for name in names]
        measured = {k: v for k, v in rates.items() if isinstance(v, float)}
        best = max(measured, key=measured.__getitem__) if measured else None
        ratio = served / measured[best] if best else None
        print(
            f"| {method} | {served:.2f} | {' | '.join(cells)} | {best or '—'} | {figure(ratio)} |",
            flush=True,
        )
        refusals += [
            f"{k} refused {service.subject.name}: {v}"
            for k, v in rates.items()
            if isinstance(v, str)
        ]
    for line in refusals:
        print(line)


def floor(service: Service, methods: list[str], inputs: torch.Tensor) -> None:
    """The bare passes' floor at batch 8 and each single-pass method's time over it."""
    bench = Bench(service.subject.module, inputs[:BATCH], service.subject.layer)
    n = len(bench.inputs)
    forward = n / median_seconds(bench.forward, 3)
    gradient = n / median_seconds(bench.forward_input_gradient, 3)
    print(f"floor: forward {forward:.2f} maps/s, forward + input gradient {gradient:.2f} maps/s")
    print("| method | service maps/s | service time / floor (forward + input gradient) |")
    print("|---|---|---|")
    for method in (m for m in methods if m in SINGLE_PASS):
        served = service.known_rate((method,))
        print(f"| {method} | {served:.2f} | {gradient / served:.2f} |")


def trio(service: Service) -> None:
    """gradcam + saliency + guided_gradcam in one request against guided_gradcam alone and
    against the three alone: seconds per image."""
    together = len(TRIO) / service.known_rate(tuple(TRIO))
    alone = {method: 1 / service.known_rate((method,)) for method in TRIO}
    print(
        f"{' + '.join(TRIO)} in one request: {together:.3f} s per image; guided_gradcam alone "
        f"{alone['guided_gradcam']:.3f} s (ratio {together / alone['guided_gradcam']:.2f}); "
        f"the three alone {sum(alone.values()):.3f} s (ratio {together / sum(alone.values()):.2f})"
    )


def scaling(service: Service, methods: list[str]) -> None:
    """Maps per second with 1 worker, then with a second one beside it."""
    one = {method: service.known_rate((method,)) for method in methods}
    service.add_worker()
    print("| method | 1 worker maps/s | 2 workers maps/s | 2 / 1 |")
    print("|---|---|---|---|")
    for method in methods:
        two = service.rate((method,))
        print(f"| {method} | {one[method]:.2f} | {two:.2f} | {two / one[method]:.2f} |")


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["resnet50", "densenet121", DEMO],
        choices=[*sorted(CAM_LAYERS), DEMO],
    )
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="torchvision models' input side")
    parser.add_argument(
        "--scaling",
        nargs="+",
        default=["gradcam", "smoothgrad"],
        choices=METHODS,
        help="methods measured with 1 and with 2 workers",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny: the demo model, 2 images, 2 clients, gradcam and lrp, gradcam on 2 workers",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.images, args.clients = [DEMO], 2, 2
        args.methods, args.scaling = ["gradcam", "lrp"], ["gradcam"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    print(machine())
    given = sys.argv[1:] if argv is None else argv
    print(f"command: python -m bench.side_by_side {' '.join(given)}".rstrip())
    print(
        f"{args.images} images, {args.clients} clients, library batches of {BATCH}, "
        f"smoothgrad {SAMPLES} samples, integrated_gradients {STEPS} steps"
    )
    torch.manual_seed(1)
    with tempfile.TemporaryDirectory(prefix="glimpse-bench-") as folder:
        for name in args.models:
            repository = Path(folder) / name
            repository.mkdir()
            subject = (
                demo_subject(args.images, repository)
                if name == DEMO
                else torchvision_subject(name, args.size, args.images, repository)
            )
            inputs = subject.inputs
            print(f"\n## {name} at {inputs.shape[-2]}×{inputs.shape[-1]}\n", flush=True)
            with serving(subject, args.clients) as service:
                compare(service, args.methods, inputs)
                print()
                floor(service, args.methods, inputs)
                print()
                trio(service)
                worker = service.workers()[0]
                memory = memory_mib(worker)
                print(
                    f"worker memory: peak (VmHWM) {memory['VmHWM']:.1f} MiB, "
                    f"now (VmRSS) {memory['VmRSS']:.1f} MiB\n"
                )
                scaling(service, args.scaling)


if __name__ == "__main__":
    main()
