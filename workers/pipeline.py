"""One batch of compatible jobs through one model: predict, attribute, render."""

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from schemas import SERVICE_VERSION
from schemas.explain import (
    ExplainResponse,
    Explanation,
    ExplanationTarget,
    ModelRef,
    OutputOptions,
    Prediction,
    Provenance,
    Scores,
    Timings,
)
from schemas.jobs import ExplanationJob
from workers import render
from workers.deadline import check_deadline
from workers.images import DecodedImage, to_model_input
from workers.methods import Normalisation, explain, resolve_params
from workers.repository import LoadedModel

MAX_PREDICTIONS = 5


@dataclass(frozen=True)
class PreparedJob:
    """A job whose image is decoded and ready for the model."""

    message: ExplanationJob
    image: DecodedImage
    picked_at: float


@dataclass(frozen=True)
class _Row:
    """One map to compute: a job's image explained for one class."""

    job: int
    class_index: int


def batch_key(message: ExplanationJob) -> tuple[str, tuple[str, ...], str]:
    """Jobs with equal keys share every forward and backward pass."""
    params = sorted((m, sorted(p.items())) for m, p in message.params.items())
    return message.model, tuple(message.methods), repr(params)


def applied_params(message: ExplanationJob, model: LoadedModel) -> dict[str, dict[str, object]]:
    """The request's parameters with the model's defaults filled in, as provenance states them."""
    return {
        method: resolve_params(
            method,
            {
                name: value
                for name, value in message.params.get(method, {}).items()
                if value is not None
            },
            cam_layer=model.default_cam_layer,
        )
        for method in message.methods
    }


def explain_jobs(
    model: LoadedModel, jobs: Sequence[PreparedJob], max_rows: int
) -> list[ExplainResponse]:
    """Explain jobs that share a `batch_key`, each with its own targets and output options."""
    spec = model.manifest.input
    started = time.perf_counter()
    inputs = to_model_input(
        [job.image for job in jobs], spec.channels, spec.height, spec.width, spec.mean, spec.std
    ).to(model.device)
    logits = model.forward_logits(inputs).float()
    probabilities = torch.softmax(logits, dim=1).cpu()
    logits = logits.cpu()
    rows = [
        _Row(job=j, class_index=c)
        for j, job in enumerate(jobs)
        for c in _targets(job.message, probabilities[j])
    ]
    params = applied_params(jobs[0].message, model)
    maps: dict[str, list[np.ndarray]] = {}
    map_ms: dict[str, list[float]] = {}
    checks: dict[str, list[dict[str, float] | None]] = {}
    signed: dict[str, bool] = {}
    for method in jobs[0].message.methods:
        maps[method], map_ms[method], checks[method] = [], [], []
        for start in range(0, len(rows), max_rows):
            check_deadline()
            chunk = rows[start : start + max_rows]
            chunk_started = time.perf_counter()
            attribution = explain(
                method,
                model.module,
                inputs[[row.job for row in chunk]],
                torch.tensor([row.class_index for row in chunk], device=model.device),
                params[method],
                cam_layer=model.default_cam_layer,
                forward=model.forward_logits,
                normalisation=Normalisation(tuple(spec.mean), tuple(spec.std)),
            )
            values = attribution.values.detach().float().cpu().numpy()
            per_map_ms = (time.perf_counter() - chunk_started) * 1000 / len(chunk)
            maps[method].extend(values)
            map_ms[method].extend([per_map_ms] * len(chunk))
            checks[method].extend(_row_checks(attribution.checks, len(chunk)))
            signed[method] = attribution.signed
    compute_ms = (time.perf_counter() - started) * 1000

    responses = []
    for j, job in enumerate(jobs):
        render_started = time.perf_counter()
        explanations = [
            _render_explanation(
                method,
                row,
                maps[method][i],
                signed[method],
                map_ms[method][i],
                checks[method][i],
                job.image,
                job.message.output,
                model,
            )
            for method in job.message.methods
            for i, row in enumerate(rows)
            if row.job == j
        ]
        render_ms = (time.perf_counter() - render_started) * 1000
        finished = time.time()
        responses.append(
            ExplainResponse(
                job_id=job.message.job_id,
                model=ModelRef(id=model.manifest.id, version=model.manifest.version),
                predictions=_predictions(probabilities[j], logits[j], model.manifest.labels),
                explanations=explanations,
                timings=Timings(
                    queue_ms=max(0.0, (job.picked_at - job.message.enqueued_at) * 1000),
                    compute_ms=compute_ms,
                    render_ms=render_ms,
                    total_ms=(finished - job.message.enqueued_at) * 1000,
                    request_id=job.message.request_id,
                ),
                provenance=Provenance(
                    model_sha256=model.sha256,
                    service_version=SERVICE_VERSION,
                    device=str(model.device),
                    params=params,
                    target=job.message.target,
                    output=job.message.output,
                    dicom=job.image.dicom,
                ),
            )
        )
    return responses


def _targets(message: ExplanationJob, probabilities: torch.Tensor) -> list[int]:
    target = message.target
    if isinstance(target, int):
        return [target]
    if isinstance(target, list):
        return list(target)
    k = int(target[3:])
    return probabilities.topk(k).indices.tolist()


def _predictions(
    probabilities: torch.Tensor, logits: torch.Tensor, labels: Sequence[str]
) -> list[Prediction]:
    top = probabilities.topk(min(MAX_PREDICTIONS, len(labels)))
    return [
        Prediction(class_index=int(i), label=labels[int(i)], score=float(p), logit=float(logits[i]))
        for p, i in zip(top.values, top.indices, strict=True)
    ]


def _render_explanation(
    method: str,
    row: _Row,
    values: np.ndarray,
    signed: bool,
    compute_ms: float,
    checks: dict[str, float] | None,
    image: DecodedImage,
    output: OutputOptions,
    model: LoadedModel,
) -> Explanation:
    height, width = image.display.shape[:2]
    # Resized before normalising, so that each map's own extreme is exactly ±1.
    full_size = render.normalize_map(render.resize_map(values, height, width), signed)
    # Colormaps read [0, 1]; a signed map's zero sits in the middle.
    colour_values = (full_size + 1) / 2 if signed else full_size
    overlay = heatmap = None
    if output.overlay:
        overlay = _b64(
            render.render_overlay(image.display, colour_values, output.colormap, output.alpha)
        )
    if output.heatmap:
        heatmap = _b64(render.render_heatmap(colour_values, output.colormap))
    scores = None
    if output.scores != "none":
        grid = _score_grid(values, full_size, signed, output)
        scores = Scores(
            shape=list(grid.shape),
            values=grid.tolist() if output.scores == "json" else None,
            base64=render.encode_scores_base64(grid) if output.scores == "base64" else None,
            min=float(grid.min()),
            max=float(grid.max()),
            signed=signed,
            normalized=output.normalize,
        )
    return Explanation(
        method=method,
        target=ExplanationTarget(
            class_index=row.class_index, label=model.manifest.labels[row.class_index]
        ),
        overlay_png=overlay,
        heatmap_png=heatmap,
        scores=scores,
        compute_ms=compute_ms,
        checks=checks,
    )


def _score_grid(
    values: np.ndarray, full_size: np.ndarray, signed: bool, output: OutputOptions
) -> np.ndarray:
    """The score array a job asked for: the map at the model's size (`values`), raw or normalised,
    or the normalised map at the input's size (`full_size`); pooled to `output.grid`, a raw map
    by cell sums so that it keeps its total."""
    if not output.normalize:
        # OutputOptions allows raw scores only at the model's size: `values` as computed.
        raw = np.asarray(values, dtype=np.float32)
        return raw if output.grid is None else render.pool_grid(raw, output.grid, total=True)
    grid = full_size if output.size == "original" else render.normalize_map(values, signed)
    if output.grid is not None:
        grid = render.pool_grid(grid, output.grid)
    return grid.astype(np.float32)


def _row_checks(checks: Mapping[str, torch.Tensor], count: int) -> list[dict[str, float] | None]:
    """The per-sample `AttributionMap.checks` split into one dict per row (None without any)."""
    if not checks:
        return [None] * count
    columns = {name: values.detach().double().cpu().tolist() for name, values in checks.items()}
    return [{name: float(values[i]) for name, values in columns.items()} for i in range(count)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
