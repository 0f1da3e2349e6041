"""One batch of compatible jobs through one model, in three steps: compute the maps (one
forward, the targets, the methods), render each job's explanations, build its response."""

import base64
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from schemas import SERVICE_VERSION
from schemas.evaluation import Evaluation
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
    most_probable,
    resolve_target,
)
from schemas.jobs import ExplanationJob
from schemas.methods import MethodParams
from workers import faithfulness, render
from workers.deadline import check_deadline
from workers.decoded import DecodedImage
from workers.images import to_model_input
from workers.methods import Normalisation, explain, resolve
from workers.repository import LoadedModel

MAX_PREDICTIONS = 5


@dataclass(frozen=True)
class PreparedJob:
    """A job whose image is decoded and ready for the model."""

    message: ExplanationJob
    image: DecodedImage
    picked_at: float


@dataclass(frozen=True)
class BatchKey:
    """Jobs with equal keys share every forward and backward pass: the same model, the same
    methods in the same order, the same parameters (as canonical JSON, keys sorted)."""

    model: str
    methods: tuple[str, ...]
    params: str

    @classmethod
    def of(cls, message: ExplanationJob) -> "BatchKey":
        return cls(
            model=message.model,
            methods=tuple(message.methods),
            params=json.dumps(message.params, sort_keys=True, separators=(",", ":")),
        )


@dataclass(frozen=True)
class _Row:
    """One map to compute: a job's image explained for one class."""

    job: int
    class_index: int


@dataclass(frozen=True)
class ComputedMap:
    """One method's map of one row, at the model's input size, before any rendering."""

    method: str
    row: _Row
    values: np.ndarray
    signed: bool
    compute_ms: float
    checks: dict[str, float] | None
    evaluation: Evaluation | None = None


@dataclass(frozen=True)
class ComputedBatch:
    """What the model computed for a batch of jobs: each image's class probabilities and
    logits, the parameters applied and every map, method by method in row order."""

    probabilities: list[list[float]]
    logits: list[list[float]]
    params: dict[str, MethodParams]
    maps: list[ComputedMap]
    compute_ms: float

    def maps_of(self, job: int) -> list[ComputedMap]:
        return [computed for computed in self.maps if computed.row.job == job]


@dataclass(frozen=True)
class RenderedJob:
    """A job's explanations as its output options asked, and the time they took to render."""

    explanations: list[Explanation]
    render_ms: float


def resolved_params(message: ExplanationJob, model: LoadedModel) -> dict[str, MethodParams]:
    """The request's parameters, typed, with the model's defaults filled in: validated here once,
    then handed to each method as they are."""
    return {
        method: resolve(
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
    """Explain jobs that share a `BatchKey`, each with its own targets and output options."""
    computed = compute_maps(model, jobs, max_rows)
    return [
        build_response(
            model, job, j, computed, render_explanations(model, job, computed.maps_of(j))
        )
        for j, job in enumerate(jobs)
    ]


def compute_maps(model: LoadedModel, jobs: Sequence[PreparedJob], max_rows: int) -> ComputedBatch:
    """One forward pass over the batch, each job's target classes, then every method's maps in
    calls of at most `max_rows` images."""
    started = time.perf_counter()
    inputs = _model_inputs(model, jobs)
    logits = model.forward_logits(inputs).float()
    probabilities = torch.softmax(logits, dim=1).cpu().tolist()
    rows = [
        _Row(job=j, class_index=c)
        for j, job in enumerate(jobs)
        for c in resolve_target(job.message.target, probabilities[j])
    ]
    params = resolved_params(jobs[0].message, model)
    maps: list[ComputedMap] = []
    for method in jobs[0].message.methods:
        for start in range(0, len(rows), max_rows):
            chunk = rows[start : start + max_rows]
            maps.extend(_attribute_rows(model, method, params[method], inputs, chunk))
    if any(job.message.evaluate for job in jobs):
        maps = _with_evaluations(model, jobs, inputs, params, maps)
    return ComputedBatch(
        probabilities=probabilities,
        logits=logits.cpu().tolist(),
        params=params,
        maps=maps,
        compute_ms=(time.perf_counter() - started) * 1000,
    )


def render_explanations(
    model: LoadedModel, job: PreparedJob, maps: Sequence[ComputedMap]
) -> RenderedJob:
    """The job's maps as its output options ask (overlays, heatmaps, score arrays), timed."""
    started = time.perf_counter()
    explanations = [
        _explanation(computed, job.image, job.message.output, model.manifest.labels)
        for computed in maps
    ]
    return RenderedJob(explanations, render_ms=(time.perf_counter() - started) * 1000)


def build_response(
    model: LoadedModel, job: PreparedJob, index: int, computed: ComputedBatch, rendered: RenderedJob
) -> ExplainResponse:
    """The answer to the batch's job number `index`, with its timings and provenance."""
    message = job.message
    return ExplainResponse(
        job_id=message.job_id,
        model=ModelRef(id=model.manifest.id, version=model.manifest.version),
        predictions=_predictions(
            computed.probabilities[index], computed.logits[index], model.manifest.labels
        ),
        explanations=rendered.explanations,
        timings=Timings(
            queue_ms=max(0.0, (job.picked_at - message.enqueued_at) * 1000),
            compute_ms=computed.compute_ms,
            render_ms=rendered.render_ms,
            total_ms=(time.time() - message.enqueued_at) * 1000,
            request_id=message.request_id,
        ),
        provenance=Provenance(
            model_sha256=model.sha256,
            service_version=SERVICE_VERSION,
            device=str(model.device),
            params={method: params.model_dump() for method, params in computed.params.items()},
            target=message.target,
            output=message.output,
            dicom=job.image.dicom,
        ),
    )


def _model_inputs(model: LoadedModel, jobs: Sequence[PreparedJob]) -> torch.Tensor:
    spec = model.manifest.input
    return to_model_input([job.image for job in jobs], spec).to(model.device)


def _attribute_rows(
    model: LoadedModel,
    method: str,
    params: MethodParams,
    inputs: torch.Tensor,
    rows: Sequence[_Row],
) -> list[ComputedMap]:
    """One call of the method over the rows' images, each for its own class."""
    check_deadline()
    spec = model.manifest.input
    started = time.perf_counter()
    attribution = explain(
        method,
        model.module,
        inputs[[row.job for row in rows]],
        torch.tensor([row.class_index for row in rows], device=model.device),
        params,
        cam_layer=model.default_cam_layer,
        forward=model.forward_logits,
        normalisation=Normalisation(tuple(spec.mean), tuple(spec.std)),
    )
    values = attribution.values.detach().float().cpu().numpy()
    per_map_ms = (time.perf_counter() - started) * 1000 / len(rows)
    checks = _row_checks(attribution.checks, len(rows))
    return [
        ComputedMap(method, row, values[i], attribution.signed, per_map_ms, checks[i])
        for i, row in enumerate(rows)
    ]


def _with_evaluations(
    model: LoadedModel,
    jobs: Sequence[PreparedJob],
    inputs: torch.Tensor,
    params: Mapping[str, MethodParams],
    maps: list[ComputedMap],
) -> list[ComputedMap]:
    """The maps, those of jobs that asked `evaluate` with their faithfulness figures: one batched
    evaluation per method."""
    spec = model.manifest.input
    normalisation = Normalisation(tuple(spec.mean), tuple(spec.std))
    evaluated = list(maps)
    for method, method_params in params.items():
        picked = [
            i for i, m in enumerate(maps) if m.method == method and jobs[m.row.job].message.evaluate
        ]
        check_deadline()
        figures = faithfulness.evaluate(
            model.forward_logits,
            inputs[[maps[i].row.job for i in picked]],
            torch.tensor([maps[i].row.class_index for i in picked], device=model.device),
            torch.from_numpy(np.stack([maps[i].values for i in picked])).to(model.device),
            method_params,
            normalisation,
        )
        for i, figure in zip(picked, figures, strict=True):
            evaluated[i] = replace(maps[i], evaluation=figure)
    return evaluated


def _predictions(
    probabilities: Sequence[float], logits: Sequence[float], labels: Sequence[str]
) -> list[Prediction]:
    return [
        Prediction(class_index=c, label=labels[c], score=probabilities[c], logit=logits[c])
        for c in most_probable(probabilities, min(MAX_PREDICTIONS, len(labels)))
    ]


def _explanation(
    computed: ComputedMap, image: DecodedImage, output: OutputOptions, labels: Sequence[str]
) -> Explanation:
    height, width = image.display.shape[:2]
    # Resized before normalising, so that each map's own extreme is exactly ±1.
    full_size = render.normalize_map(
        render.resize_map(computed.values, height, width), computed.signed
    )
    # Colormaps read [0, 1]; a signed map's zero sits in the middle.
    colour_values = (full_size + 1) / 2 if computed.signed else full_size
    overlay = heatmap = None
    if output.overlay:
        overlay = _b64(
            render.render_overlay(image.display, colour_values, output.colormap, output.alpha)
        )
    if output.heatmap:
        heatmap = _b64(render.render_heatmap(colour_values, output.colormap))
    class_index = computed.row.class_index
    return Explanation(
        method=computed.method,
        target=ExplanationTarget(class_index=class_index, label=labels[class_index]),
        overlay_png=overlay,
        heatmap_png=heatmap,
        scores=_scores(computed.values, full_size, computed.signed, output),
        compute_ms=computed.compute_ms,
        checks=computed.checks,
        evaluation=computed.evaluation,
    )


def _scores(
    values: np.ndarray, full_size: np.ndarray, signed: bool, output: OutputOptions
) -> Scores | None:
    if output.scores == "none":
        return None
    grid = _score_grid(values, full_size, signed, output)
    return Scores(
        shape=list(grid.shape),
        values=grid.tolist() if output.scores == "json" else None,
        base64=render.encode_scores_base64(grid) if output.scores == "base64" else None,
        min=float(grid.min()),
        max=float(grid.max()),
        signed=signed,
        normalized=output.normalize,
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
