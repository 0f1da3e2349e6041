"""One batch of compatible jobs through one model, in three steps: compute the maps (one
forward, the targets, the methods), render each job's explanations, build its response."""

import base64
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from schemas import SERVICE_VERSION
from schemas.evaluation import EVALUATE_CLASSIFIERS_ONLY, Evaluation
from schemas.explain import (
    ExplainResponse,
    Explanation,
    ExplanationTarget,
    MapChecks,
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
from workers import faithfulness, map_checks, render, segmentation
from workers.deadline import check_deadline
from workers.decoded import DecodedImage
from workers.dicom_objects import DerivedDescription, explanation_objects
from workers.images import to_model_input
from workers.methods import Normalisation, explain, explain_jointly, get_method, resolve
from workers.methods.base import (
    AttributionMap,
    Forward,
    ForwardOnlyMethod,
    UnsupportedModelError,
)
from workers.methods.passes import PassMethod, run_passes
from workers.predictions import class_probabilities as activated
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
    """One map to compute: a job's image explained for one class (of a segmentation model, for
    one class over one region)."""

    job: int
    class_index: int
    region: segmentation.Region | None = None


@dataclass(frozen=True)
class ComputedMap:
    """One method's map of one row, at the model's input size, before any rendering."""

    method: str
    row: _Row
    values: np.ndarray
    signed: bool
    compute_ms: float
    checks: MapChecks | None
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
    predictions: list[list[Prediction]] | None = None
    """Of a segmentation model: each image's classes present, with their pixel shares."""

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
    return respond(model, jobs, compute_maps(model, jobs, max_rows))


def respond(
    model: LoadedModel, jobs: Sequence[PreparedJob], computed: "ComputedBatch"
) -> list[ExplainResponse]:
    """Each job's response from the batch's maps: rendered, then built (the worker runs this
    off its compute path, see `workers.finishing`)."""
    return [_response(model, job, j, computed) for j, job in enumerate(jobs)]


def respond_each(
    model: LoadedModel, jobs: Sequence[PreparedJob], computed: "ComputedBatch"
) -> list[ExplainResponse | Exception]:
    """`respond`, job by job: a job whose rendering raises (its derived DICOM objects, say) gets
    the exception in its place, and every other job its response."""
    outcomes: list[ExplainResponse | Exception] = []
    for j, job in enumerate(jobs):
        try:
            outcomes.append(_response(model, job, j, computed))
        except Exception as exc:  # noqa: BLE001 - one job's failure is that job's alone
            outcomes.append(exc)
    return outcomes


def _response(
    model: LoadedModel, job: PreparedJob, index: int, computed: "ComputedBatch"
) -> ExplainResponse:
    rendered = render_explanations(model, job, computed.maps_of(index))
    return build_response(model, job, index, computed, rendered)


def compute_maps(model: LoadedModel, jobs: Sequence[PreparedJob], max_rows: int) -> ComputedBatch:
    """Every method's maps for the batch. The methods' shared gradient passes
    (`workers.methods.passes`) run over chunks of at most `max_rows` images, and their first
    forward gives the logits, so each job's targets, before any backward; the other methods then
    run in calls of at most `max_rows` rows. Without a shared pass (or for an ONNX model, whose
    predictions come from ONNX Runtime) a forward pass of its own gives the logits first."""
    started = time.perf_counter()
    inputs = _model_inputs(model, jobs)
    params = resolved_params(jobs[0].message, model)
    methods = jobs[0].message.methods
    if model.manifest.task == "segmentation":
        passed = _segmentation_rows(model, jobs, inputs)
    else:
        passed = _classification_rows(model, jobs, inputs, params, max_rows)
    rows = passed.rows
    joint = _jointly_computed(model, methods, params, inputs, rows, max_rows)
    maps: list[ComputedMap] = []
    for method in methods:
        if method in passed.shared_maps or method in joint:
            maps.extend(passed.shared_maps.get(method) or joint[method])
            continue
        for start in range(0, len(rows), max_rows):
            chunk_rows = rows[start : start + max_rows]
            maps.extend(_attribute_rows(model, method, params[method], inputs, chunk_rows))
    if any(job.message.evaluate for job in jobs):
        maps = _with_evaluations(model, jobs, inputs, params, maps)
    return ComputedBatch(
        probabilities=passed.probabilities,
        logits=passed.logits,
        params=params,
        maps=maps,
        compute_ms=(time.perf_counter() - started) * 1000,
        predictions=passed.predictions,
    )


def _jointly_computed(  # noqa: PLR0913 - the batch and what computes it
    model: LoadedModel,
    methods: Sequence[str],
    params: Mapping[str, MethodParams],
    inputs: torch.Tensor,
    rows: Sequence[_Row],
    max_rows: int,
) -> dict[str, list[ComputedMap]]:
    """The maps of a request's forward-only methods (occlusion, RISE) when it asks for more than
    one: their forward passes shared (`explain_jointly`), in calls of at most `max_rows` rows."""
    joint = [m for m in methods if isinstance(get_method(m), ForwardOnlyMethod)]
    if len(joint) < 2:
        return {}
    maps: dict[str, list[ComputedMap]] = {method: [] for method in joint}
    for start in range(0, len(rows), max_rows):
        chunk_rows = rows[start : start + max_rows]
        for method, computed in _attribute_rows_jointly(model, joint, params, inputs, chunk_rows):
            maps[method].extend(computed)
    return maps


def _region_rows(
    model: LoadedModel, jobs: Sequence[PreparedJob], logits: torch.Tensor
) -> list[_Row]:
    """A segmentation model's rows: each job's target class over its region."""
    return [
        _Row(job=j, class_index=region.class_index, region=region)
        for j, job in enumerate(jobs)
        for region in segmentation.target_regions(
            job.message.target, logits[j], model.manifest, job.image.display.shape[:2]
        )
    ]


@dataclass(frozen=True)
class _BatchRows:
    """The batch's predictions and rows to explain, and the maps the shared passes gave already
    (by method): what the first forward of a batch decides."""

    probabilities: list[list[float]]
    logits: list[list[float]]
    rows: list[_Row]
    shared_maps: dict[str, list[ComputedMap]]
    predictions: list[list[Prediction]] | None = None


def _segmentation_rows(
    model: LoadedModel, jobs: Sequence[PreparedJob], inputs: torch.Tensor
) -> _BatchRows:
    """A segmentation model's forward, its per-image predictions and each job's region rows;
    its methods run over the rows' region scores (no shared passes)."""
    logits = model.forward_logits(inputs).float()
    return _BatchRows(
        probabilities=[[] for _ in jobs],
        logits=[[] for _ in jobs],
        rows=_region_rows(model, jobs, logits),
        shared_maps={},
        predictions=[segmentation.predictions(image, model.manifest.labels) for image in logits],
    )


def _classification_rows(
    model: LoadedModel,
    jobs: Sequence[PreparedJob],
    inputs: torch.Tensor,
    params: Mapping[str, MethodParams],
    max_rows: int,
) -> _BatchRows:
    """The methods' shared gradient passes over chunks of at most `max_rows` images, whose first
    forward gives the logits and so each job's targets; without a shared pass (or for an ONNX
    model, whose predictions come from ONNX Runtime) a forward pass of its own gives them."""
    shared = {
        method: implementation
        for method in jobs[0].message.methods
        if isinstance(implementation := get_method(method), PassMethod)
    }
    for implementation in shared.values():
        # As `explain` does for the others: a method that does not apply says why, never runs.
        if (refusal := implementation.refusal(model.module)) is not None:
            raise UnsupportedModelError(refusal)
    known = None
    if model.onnx_session is not None or not shared:
        known = model.forward_logits(inputs).float()
    plan = _SharedPlan(model, jobs, inputs, [(m, pm, params[m]) for m, pm in shared.items()], known)
    chunks = [plan.chunk(start, start + max_rows) for start in range(0, len(jobs), max_rows)]
    logits = torch.cat([chunk.logits for chunk in chunks])
    probabilities = activated(logits, model.manifest.output.activation).cpu().tolist()
    rows = [
        _Row(job=j, class_index=c)
        for j, job in enumerate(jobs)
        for c in resolve_target(job.message.target, probabilities[j])
    ]
    return _BatchRows(
        probabilities=probabilities,
        logits=logits.cpu().tolist(),
        rows=rows,
        shared_maps={
            method: [computed for chunk in chunks for computed in chunk.maps[method]]
            for method in shared
        },
    )


@dataclass(frozen=True)
class _SharedChunk:
    """A chunk of jobs through the shared passes: its logits and each shared method's maps."""

    logits: torch.Tensor
    maps: dict[str, list[ComputedMap]]


@dataclass(frozen=True)
class _SharedPlan:
    """The batch's methods that share passes, and the logits when they are known already."""

    model: LoadedModel
    jobs: Sequence[PreparedJob]
    inputs: torch.Tensor
    planned: list[tuple[str, PassMethod[Any], MethodParams]]
    known: torch.Tensor | None

    def chunk(self, start: int, stop: int) -> _SharedChunk:
        """The shared passes over jobs `start:stop`: their logits and maps, rows numbered in the
        batch. A shared pass's time is divided among the maps it served."""
        known = None if self.known is None else self.known[start:stop]
        if not self.planned:
            assert known is not None
            return _SharedChunk(known, {})
        check_deadline()
        started = time.perf_counter()
        jobs = self.jobs[start:stop]

        def choose(logits: torch.Tensor) -> list[list[int]]:
            scores = (logits if known is None else known).float()
            activation = self.model.manifest.output.activation
            probabilities = activated(scores, activation).cpu().tolist()
            return [
                resolve_target(job.message.target, p)
                for job, p in zip(jobs, probabilities, strict=True)
            ]

        model = self.model
        result = run_passes(
            model.module,
            self.inputs[start:stop],
            [(method, params) for _, method, params in self.planned],
            choose,
            model.default_cam_layer,
        )
        rows = [
            _Row(job=start + i, class_index=c)
            for i, classes in enumerate(result.targets)
            for c in classes
        ]
        per_map_ms = (time.perf_counter() - started) * 1000 / max(1, len(rows) * len(result.maps))
        maps = {
            method: _computed_maps(method, rows, attribution, per_map_ms)
            for (method, _, _), attribution in zip(self.planned, result.maps, strict=True)
        }
        logits = result.logits.float() if known is None else known
        return _SharedChunk(logits, maps)


def render_explanations(
    model: LoadedModel, job: PreparedJob, maps: Sequence[ComputedMap]
) -> RenderedJob:
    """The job's maps as its output options ask (overlays, heatmaps, score arrays), timed."""
    started = time.perf_counter()
    explanations = [
        _explanation(computed, job.image, job.message.output, model) for computed in maps
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
        )
        if computed.predictions is None
        else computed.predictions[index],
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
    started = time.perf_counter()
    call = _row_call(model, inputs, rows)
    attribution = explain(method, call.network, call.inputs, call.targets, params, **call.settings)
    per_map_ms = (time.perf_counter() - started) * 1000 / len(rows)
    return _computed_maps(method, rows, attribution, per_map_ms)


def _attribute_rows_jointly(
    model: LoadedModel,
    methods: Sequence[str],
    params: Mapping[str, MethodParams],
    inputs: torch.Tensor,
    rows: Sequence[_Row],
) -> list[tuple[str, list[ComputedMap]]]:
    """One joint call of the forward-only methods over the rows' images (`explain_jointly`);
    the call's time is divided among its maps."""
    check_deadline()
    started = time.perf_counter()
    call = _row_call(model, inputs, rows)
    attributions = explain_jointly(
        methods,
        call.network,
        call.inputs,
        call.targets,
        [params[m] for m in methods],
        **call.settings,
    )
    per_map_ms = (time.perf_counter() - started) * 1000 / (len(rows) * len(methods))
    return [
        (method, _computed_maps(method, rows, attribution, per_map_ms))
        for method, attribution in zip(methods, attributions, strict=True)
    ]


@dataclass(frozen=True)
class _RowCall:
    """What a method call over some rows takes: the network, the rows' images and targets, and
    the keyword settings of `explain`."""

    network: torch.nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    settings: dict[str, Any]


def _row_call(model: LoadedModel, inputs: torch.Tensor, rows: Sequence[_Row]) -> _RowCall:
    """The call over `rows`: each row's image for its own class, or a segmentation row's region
    score."""
    spec = model.manifest.input
    regions = [row.region for row in rows if row.region is not None]
    # RISE and Score-CAM weigh by the target's probability under the model's own activation.
    probability: Forward = partial(activated, activation=model.manifest.output.activation)
    if regions:
        region_batch = segmentation.region_batch(model.module, model.forward_logits, regions)
        network, forward, targets = region_batch.model, region_batch.forward, region_batch.targets
        probability = region_batch.probability
    else:
        network, forward = model.module, model.forward_logits
        targets = torch.tensor([row.class_index for row in rows], device=model.device)
    return _RowCall(
        network,
        inputs[[row.job for row in rows]],
        targets,
        {
            "cam_layer": model.default_cam_layer,
            "forward": forward,
            "normalisation": Normalisation(tuple(spec.mean), tuple(spec.std)),
            "probability": probability,
        },
    )


def _computed_maps(
    method: str, rows: Sequence[_Row], attribution: AttributionMap, per_map_ms: float
) -> list[ComputedMap]:
    """The rows' maps as numpy, each with its checks (a degenerate map flagged, non-finite
    values zeroed)."""
    values = attribution.values.detach().float().cpu().numpy()
    checks = map_checks.row_checks(attribution, values)
    values = map_checks.finite_values(values)
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
    evaluation per method. A degenerate map without an order of its pixels gets none
    (`map_checks.orders_pixels`): its `checks.warning` says why."""
    if model.manifest.task == "segmentation":
        raise UnsupportedModelError(EVALUATE_CLASSIFIERS_ONLY)
    spec = model.manifest.input
    normalisation = Normalisation(tuple(spec.mean), tuple(spec.std))
    evaluated = list(maps)
    for method, method_params in params.items():
        picked = [
            i
            for i, m in enumerate(maps)
            if m.method == method
            and jobs[m.row.job].message.evaluate
            and map_checks.orders_pixels(m.checks)
        ]
        check_deadline()
        if not picked:
            continue
        figures = faithfulness.evaluate(
            model.forward_logits,
            inputs[[maps[i].row.job for i in picked]],
            torch.tensor([maps[i].row.class_index for i in picked], device=model.device),
            torch.from_numpy(np.stack([maps[i].values for i in picked])).to(model.device),
            method_params,
            normalisation,
            activation=model.manifest.output.activation,
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
    computed: ComputedMap, image: DecodedImage, output: OutputOptions, model: LoadedModel
) -> Explanation:
    labels = model.manifest.labels
    height, width = image.display.shape[:2]
    # Resized before normalising, so that each map's own extreme is exactly ±1.
    full_size = render.normalize_map(
        render.resize_map(computed.values, height, width), computed.signed
    )
    # Colormaps read [0, 1]; a signed map's zero sits in the middle.
    colour_values = (full_size + 1) / 2 if computed.signed else full_size
    warned = computed.checks.degenerate if computed.checks else None
    overlay = heatmap = dicom = None
    if output.overlay or output.dicom:
        # Blended once, a degenerate map's warning in its corner, for the PNG and the Secondary
        # Capture alike.
        blended = render.blend_overlay(
            image.display, colour_values, output.colormap, output.alpha, warning=warned
        )
        if output.overlay:
            overlay = _b64(render.encode_png(blended))
    if output.heatmap:
        heatmap = _b64(render.render_heatmap(colour_values, output.colormap))
    class_index = computed.row.class_index
    if output.dicom:
        about = DerivedDescription.of(computed.method, class_index, model, output)
        about = replace(about, signed=computed.signed, warning=warned)
        dicom = explanation_objects(image, full_size, blended, about, output.dicom)
    return Explanation(
        method=computed.method,
        target=ExplanationTarget(
            class_index=class_index,
            label=labels[class_index],
            region=None if computed.row.region is None else computed.row.region.kind,
        ),
        overlay_png=overlay,
        heatmap_png=heatmap,
        scores=_scores(computed.values, full_size, computed.signed, output),
        compute_ms=computed.compute_ms,
        checks=computed.checks,
        dicom=dicom,
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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
