"""Explanation quality on demo-lesions' held-out images, per method and format (SPEC §10).

For every method in the catalogue, on the demo model from its safetensors weights and from its
ONNX twin (gradients through the onnx2torch conversion, forward passes on ONNX Runtime), each map
explains the image's true class and is scored by `workers.faithfulness`. The deletion and
insertion curves' forward passes run on ONNX Runtime, batched, in both formats (the twin computes
the safetensors model's logits to float32 round-off, ten times faster on a CPU than PyTorch):

- pointing game and relevance mass (and its ratio to the lesion's share of the image), on the
  images that hold a lesion;
- deletion and insertion AUC and the top-10 % drop, on every image;
- the cascading randomisation check on the first `--randomisation-images` images: the mean
  Spearman correlation of |map| before and after re-drawing the top layers, one more per cut.
  Randomised models run in PyTorch in both formats (ONNX Runtime holds its own weights).

Time per image is given for each figure as this process's CPU time (every thread of it), so that
other work on the machine does not inflate it. Run: `python -m bench.quality [--images 500]`.
"""

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.methods_perturbation import onnx_twin
from schemas.methods import PARAMS_BY_METHOD
from workers import faithfulness
from workers.demo.data import make_dataset
from workers.demo.train import HELDOUT_SEED
from workers.methods import METHODS, Normalisation, explain
from workers.repository import LoadedModel, load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
MAP_BATCH = 32
BENCH_PARAMS: dict[str, dict[str, object]] = {
    "integrated_gradients": {"steps": 32, "max_steps": 32},
    "occlusion": {"stride": 16},
    "rise": {"masks": 200},
}
"""Cheaper settings than the defaults for the methods that need hundreds of passes an image
(fixed 32 steps; 49 windows instead of 225; 200 masks instead of 1,000), so that the run fits
on two cores; every other method runs with its defaults."""


@dataclass(frozen=True)
class HeldOut:
    """Held-out images, normalised (N, 1, H, W), their true classes and lesion masks."""

    inputs: torch.Tensor
    labels: torch.Tensor
    masks: np.ndarray


@dataclass
class Row:
    """One method's figures on one format; `None` where the method does not apply."""

    method: str
    format: str
    figures: dict[str, float] = field(default_factory=dict)
    correlations: list[float] = field(default_factory=list)
    randomised_images: int = 0
    ms_per_image: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def held_out(count: int, model: LoadedModel) -> HeldOut:
    images, labels, masks = make_dataset(count, HELDOUT_SEED)
    spec = model.manifest.input
    inputs = (torch.from_numpy(images)[:, None] - spec.mean[0]) / spec.std[0]
    return HeldOut(inputs, torch.from_numpy(labels), masks)


def timed(run: Callable[[], np.ndarray], images: int) -> tuple[np.ndarray, float]:
    """`run`'s result and its CPU milliseconds per image."""
    started = time.process_time()
    result = run()
    return result, (time.process_time() - started) * 1000 / max(images, 1)


def method_maps(
    model: LoadedModel, method: str, data: HeldOut, forward: Callable[[torch.Tensor], torch.Tensor]
) -> np.ndarray:
    """The method's maps (N, H, W) of the images for their true classes, with its defaults."""
    spec = model.manifest.input
    normalisation = Normalisation(tuple(spec.mean), tuple(spec.std))
    maps = []
    for start in range(0, len(data.inputs), MAP_BATCH):
        chunk = slice(start, start + MAP_BATCH)
        attribution = explain(
            method,
            model.module,
            data.inputs[chunk],
            data.labels[chunk],
            BENCH_PARAMS.get(method, {}),
            cam_layer=model.default_cam_layer,
            forward=forward,
            normalisation=normalisation,
        )
        maps.append(attribution.values.detach().double().cpu().numpy())
    return np.concatenate(maps)


def localisation(maps: np.ndarray, data: HeldOut) -> dict[str, float]:
    """Pointing game and relevance mass over the images that hold a lesion."""
    lesion = data.labels.numpy() != 0
    masks = data.masks[lesion]
    mass = np.nan_to_num(faithfulness.relevance_mass(maps[lesion], masks), nan=0.0)
    share = faithfulness.lesion_share(masks)
    return {
        "pointing": float(faithfulness.pointing_hits(maps[lesion], masks).mean()),
        "mass": float(mass.mean()),
        "share": float(share.mean()),
        "mass_ratio": float((mass / share).mean()),
    }


def perturbation(
    curves: LoadedModel, method: str, maps: np.ndarray, data: HeldOut
) -> dict[str, float]:
    """Mean deletion AUC, insertion AUC and top-10 % drop, forward passes on `curves` (the ONNX
    twin on ONNX Runtime)."""
    spec = curves.manifest.input
    figures = faithfulness.evaluate(
        curves.forward_logits,
        data.inputs,
        data.labels,
        torch.from_numpy(maps).float(),
        PARAMS_BY_METHOD[method].model_validate(BENCH_PARAMS.get(method, {})),
        Normalisation(tuple(spec.mean), tuple(spec.std)),
    )
    return {
        name: float(np.mean([getattr(f, name) for f in figures]))
        for name in ("deletion_auc", "insertion_auc", "top10_drop")
    }


def randomisation(model: LoadedModel, method: str, maps: np.ndarray, data: HeldOut) -> list[float]:
    """Mean rank correlation of |map| with the trained model's, one value per cascading cut."""
    cuts = faithfulness.randomisation_cuts(model.module)
    correlations = []
    for depth in range(1, len(cuts) + 1):
        with faithfulness.randomised(model.module, cuts[:depth]) as randomised:
            after = method_maps(model, method, data, randomised)
        rho = faithfulness.rank_correlation(np.abs(maps), np.abs(after))
        correlations.append(float(np.nanmean(rho)) if not np.isnan(rho).all() else float("nan"))
    return correlations


def subset(data: HeldOut, count: int) -> HeldOut:
    """The first `count` images."""
    return HeldOut(data.inputs[:count], data.labels[:count], data.masks[:count])


def measure(  # noqa: PLR0913 - the model, its twin for the curves, and what to measure
    model: LoadedModel,
    twin: LoadedModel,
    fmt: str,
    method: str,
    data: HeldOut,
    counts: tuple[int, int],
) -> Row:
    """The method's figures: localisation on every image, the curves (on `twin`) on the first
    `counts[0]`, the randomisation check on the first `counts[1]`."""
    row = Row(method, fmt)
    if not METHODS[method].supports(model.module):
        row.reason = "does not apply to this model"
        return row
    maps, row.ms_per_image["maps"] = timed(
        lambda: method_maps(model, method, data, model.forward_logits), len(data.inputs)
    )
    row.figures, row.ms_per_image["localisation"] = timed(
        lambda: localisation(maps, data), len(maps)
    )
    curves, randomised = counts
    figures, row.ms_per_image["curves"] = timed(
        lambda: perturbation(twin, method, maps[:curves], subset(data, curves)), curves
    )
    row.figures |= figures
    row.randomised_images = min(randomised, len(maps))
    row.correlations, row.ms_per_image["randomisation"] = timed(
        lambda: randomisation(model, method, maps[:randomised], subset(data, randomised)),
        randomised,
    )
    return row


def models(folder: Path, formats: list[str]) -> Iterator[tuple[str, LoadedModel, LoadedModel]]:
    """Each format's model and the ONNX twin that runs the curves."""
    device = torch.device("cpu")
    twin = load_model(onnx_twin(folder), device)
    if "safetensors" in formats:
        yield "safetensors", load_model(DEMO, device), twin
    if "onnx" in formats:
        yield "onnx", twin, twin


def table(rows: list[Row], cuts: list[str]) -> str:
    head = (
        "| method | format | pointing | mass | mass / share | deletion AUC | insertion AUC "
        "| top-10 % drop | " + " | ".join(f"ρ {cut}" for cut in cuts) + " | ρ images "
        "| CPU-ms/img maps | CPU-ms/img localisation | CPU-ms/img curves "
        "| CPU-ms/img randomisation |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        if row.reason:
            lines.append(f"| {row.method} | {row.format} | {row.reason} |")
            continue
        f, t = row.figures, row.ms_per_image
        cells = [
            f"{f['pointing']:.3f}",
            f"{f['mass']:.3f}",
            f"{f['mass_ratio']:.2f}",
            f"{f['deletion_auc']:.3f}",
            f"{f['insertion_auc']:.3f}",
            f"{f['top10_drop']:.3f}",
            *(f"{rho:.2f}" for rho in row.correlations),
            str(row.randomised_images),
            *(f"{t[k]:.1f}" for k in ("maps", "localisation", "curves", "randomisation")),
        ]
        lines.append(f"| {row.method} | {row.format} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="held-out images")
    parser.add_argument(
        "--curve-images", type=int, default=500, help="images of the deletion/insertion curves"
    )
    parser.add_argument(
        "--randomisation-images", type=int, default=500, help="images of the randomisation check"
    )
    parser.add_argument("--methods", nargs="*", default=sorted(PARAMS_BY_METHOD))
    parser.add_argument("--formats", nargs="*", default=["safetensors", "onnx"])
    parser.add_argument(
        "--cam-layer", help="the CAM methods' layer instead of the model's default (`cam_layer`)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method parameter other than the benchmark's (VALUE read as JSON where it can be)",
    )
    args = parser.parse_args(argv)
    for setting in args.param:
        name, value = setting.split("=", 1)
        method, key = name.split(".", 1)
        try:
            parsed: object = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare word: a string
        BENCH_PARAMS.setdefault(method, {})[key] = parsed
    counts = (min(args.curve_images, args.images), min(args.randomisation_images, args.images))
    rows: list[Row] = []
    cuts: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt, served, twin in models(Path(folder), args.formats):
            layer = args.cam_layer or served.default_cam_layer
            model = dataclasses.replace(served, default_cam_layer=layer)
            data = held_out(args.images, model)
            cuts = cuts or faithfulness.randomisation_cuts(model.module)
            for method in args.methods:
                rows.append(measure(model, twin, fmt, method, data, counts))
                print(table(rows[-1:], cuts).splitlines()[-1], flush=True)
    lesions = int((make_dataset(args.images, HELDOUT_SEED)[1] != 0).sum())
    applied = {m: BENCH_PARAMS[m] for m in args.methods if m in BENCH_PARAMS}
    report = (
        f"{args.images} held-out images (seeds {HELDOUT_SEED}…, {lesions} with a lesion), "
        f"curves on {counts[0]}, randomisation on {counts[1]}; "
        f"CAM layer {args.cam_layer or 'the model default'}; "
        f"parameters {json.dumps(applied)}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads\n\n"
        + table(rows, cuts)
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
