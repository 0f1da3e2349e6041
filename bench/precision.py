"""How far mixed precision moves each method's maps: every method that applies, on a calibrated
random-weight torchvision model, in float32 and under `GLIMPSE_PRECISION`'s autocast, on the same
batch: the largest |difference| relative to the float32 map's range, per method, and the time of
each. On a CPU only bfloat16 is meaningful; `--device cuda` measures a GPU.

    python -m bench.precision [--model resnet18] [--size 64] [--batch 2] [--device cpu]
"""

import argparse
import time

import torch

from bench.harness import CAM_LAYERS, calibrated
from workers.methods import METHODS, Normalisation, available_methods, explain
from workers.precision import computing

IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Methods whose cost is many passes: fewer of them, so the table is quick.
QUICK: dict[str, dict[str, object]] = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 8, "max_steps": 8},
    "rise": {"masks": 64},
    "occlusion": {"window": 16, "stride": 16},
}


def deviation(reduced: torch.Tensor, full: torch.Tensor) -> float:
    span = (full.flatten(1).amax(1) - full.flatten(1).amin(1)).clamp(min=1e-30)
    return float(((reduced - full).abs().flatten(1).amax(1) / span).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(CAM_LAYERS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--methods", nargs="*", help="these methods only (default: all)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = calibrated(args.model, args.size).to(device)
    inputs = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        targets = model(inputs).argmax(1)
    layer = CAM_LAYERS[args.model]
    print(
        f"{args.model} at {args.size}², batch {args.batch}, {device}: {args.precision} autocast "
        "against float32"
    )
    print(f"{'method':<22} {'max |Δ| / range':>16} {'float32 s':>10} {'reduced s':>10}")
    for method in available_methods(model):
        if method not in METHODS or (args.methods and method not in args.methods):
            continue
        params = QUICK.get(method, {})

        def run(precision: str, m: str = method, p: dict[str, object] = params) -> torch.Tensor:
            with computing(device, precision):
                return explain(
                    m, model, inputs, targets, p, cam_layer=layer, normalisation=IMAGENET
                ).values.float()

        try:
            started = time.perf_counter()
            full = run("float32")
            middle = time.perf_counter()
            reduced = run(args.precision)
            ended = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - a method that cannot run says why, and the rest go on
            print(f"{method:<22} {type(exc).__name__}: {exc}"[:100])
            continue
        print(
            f"{method:<22} {deviation(reduced, full):16.2e} {middle - started:10.2f} "
            f"{ended - middle:10.2f}"
        )


if __name__ == "__main__":
    main()
