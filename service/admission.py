"""Turns an HTTP explain request into a queued job, or into the error that says why not."""

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from schemas import keys
from schemas.dicom import DicomOptions
from schemas.evaluation import EVALUATE_CLASSIFIERS_ONLY
from schemas.explain import ExplainOptions, ExplainRequest
from schemas.jobs import ExplanationJob, VisualizationJob
from schemas.logs import LogFields, log_fields
from schemas.methods import Workload, job_passes
from schemas.models import FailedModel, ModelInfo
from schemas.visualizations import ACTIVATION_MAX
from service.auth import Principal
from service.body import check_json_size, parse_json
from service.concurrency import ConcurrencyLimit
from service.config import Settings
from service.dicom import (
    check_dicom_options,
    check_dicom_output,
    kept_dicom_elements,
    minimal_dicom,
)
from service.dicomweb import check_dicomweb
from service.errors import (
    BadImage,
    InvalidFields,
    InvalidRequest,
    NotFound,
    Unavailable,
    UnsupportedMedia,
)
from service.idempotency import IdempotentRequest, idempotent_request
from service.images import ImageHeader, decode_base64_image, inspect_image
from service.queue import JobQueue, NewJob
from service.region_targets import check_region_target

JSON_FIELDS = ("target", "params", "output", "dicom", "store", "evaluate")

log = logging.getLogger("glimpse.gateway")


async def read_explain_request(request: Request) -> tuple[ExplainOptions, bytes]:
    """The options and the raw image bytes of a JSON or multipart explain request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        parsed = await parse_json(request, ExplainRequest)
        if parsed.image is None:  # a `source`: the worker fetches the image
            return parsed.options(), b""
        image = await anyio.to_thread.run_sync(decode_base64_image, parsed.image)
        return parsed.options(), image
    if content_type == "multipart/form-data":
        return await _read_multipart(request)
    raise UnsupportedMedia("Send application/json or multipart/form-data.")


async def _read_multipart(request: Request) -> tuple[ExplainOptions, bytes]:
    form = await request.form()
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("The form needs a file part named `image`.")
    image = await upload.read()
    fields: dict[str, object] = {}
    for name, value in form.multi_items():
        if name == "image" or not isinstance(value, str):
            continue
        if name == "methods":
            methods = fields.setdefault("methods", [])
            assert isinstance(methods, list)
            methods.extend(part.strip() for part in value.split(",") if part.strip())
        elif name in JSON_FIELDS:
            fields[name] = _form_json(name, value)
        else:
            fields[name] = value
    try:
        return ExplainOptions.model_validate(fields), image
    except ValidationError as exc:
        raise InvalidFields(exc) from exc


def _form_json(name: str, value: str) -> object:
    """Form fields are text: `target` may be a bare word, the rest is JSON."""
    check_json_size(value.encode(), f"Form field `{name}`")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        if name == "target":
            return value
        raise InvalidRequest(f"Form field `{name}` is not valid JSON.") from None


def check_against_model(options: ExplainOptions, info: ModelInfo) -> None:
    """What only the model can tell: supported methods, class range, CAM layers."""
    refused = [info.unsupported[m] for m in options.methods if m in info.unsupported]
    if refused:
        raise InvalidRequest(f"Model {info.id!r}: {'; '.join(refused)}.")
    unsupported = [m for m in options.methods if m not in info.methods]
    if unsupported:
        raise InvalidRequest(
            f"Model {info.id!r} does not support {', '.join(unsupported)}; "
            f"it supports {', '.join(info.methods)}."
        )
    classes = options.class_indices() or []
    out_of_range = [c for c in classes if c >= len(info.labels)]
    if out_of_range:
        raise InvalidRequest(
            f"Class index {out_of_range[0]} is out of range: {info.id!r} has "
            f"{len(info.labels)} classes (0–{len(info.labels) - 1})."
        )
    if options.top_k() > len(info.labels):
        raise InvalidRequest(f"{info.id!r} has only {len(info.labels)} classes.")
    if options.evaluate and info.task == "segmentation":
        raise InvalidRequest(f"Model {info.id!r}: {EVALUATE_CLASSIFIERS_ONLY}.")
    for method, params in options.params.items():
        layer = params.get("layer")
        if layer is not None and layer not in info.cam_layers:
            raise InvalidRequest(
                f"Layer {layer!r} of {method} is not a CAM layer of {info.id!r}; "
                "GET /v1/models/{id} lists them."
            )


def check_output(
    options: ExplainOptions, info: ModelInfo, header: ImageHeader, settings: Settings
) -> None:
    """The score grid must fit the map, and a score array must stay a sensible size."""
    output = options.output
    if output.size == "model":
        height, width = info.input.height, info.input.width
    else:
        height, width = header.height, header.width
    if output.grid is not None and output.grid > min(height, width):
        raise InvalidRequest(
            f"output.grid {output.grid} exceeds the {height}×{width} map; "
            f"at most {min(height, width)}."
        )
    cells = output.grid**2 if output.grid is not None else height * width
    if output.scores != "none" and cells > settings.max_score_values:
        raise InvalidRequest(
            f"Scores of {height}×{width} values are too many to return; ask for "
            '`output.grid`, `output.size: "model"` or `output.scores: "none"`.'
        )


def check_cost(options: ExplainOptions, info: ModelInfo, settings: Settings) -> None:
    """422 for a job whose passes over the model's input exceed `max_job_passes`."""
    targets = len(options.class_indices() or []) or options.top_k()
    work = Workload(
        height=info.input.height,
        width=info.input.width,
        targets=targets,
        layer_channels=info.cam_layer_channels,
        default_layer=info.default_cam_layer,
    )
    cost = job_passes(options.method_params(), work, evaluate=options.evaluate)
    if cost > settings.max_job_passes:
        raise InvalidRequest(
            f"The job would cost {cost:,.0f} passes (over a 256×256 input) on {info.id!r}; "
            f"at most {settings.max_job_passes:,.0f} are accepted. Ask for fewer methods, "
            "targets, samples, steps or masks, or a larger occlusion stride."
        )


async def find_model(queue: JobQueue, model_id: str, settings: Settings) -> ModelInfo:
    """The served model a request names: 404 when no worker knows it, 503 when it failed to load."""
    entry = await queue.model(model_id)
    if entry is None:
        raise NotFound(f"No model {model_id!r}; GET /v1/models lists the models.")
    if isinstance(entry, FailedModel):
        raise Unavailable(
            f"Model {model_id!r} (version {entry.version}) failed to load: {entry.reason}",
            retry_after=settings.retry_after_s,
        )
    return entry


def check_capacity(settings: Settings, info: ModelInfo) -> None:
    """503 without a live worker for the model (as `info`, fresh from `JobQueue.model`, counts
    them). Whether its queue has room is checked as the jobs are queued, in the same step."""
    if info.live_workers == 0:
        raise Unavailable(f"No live worker serves {info.id!r}.", retry_after=settings.retry_after_s)


@dataclass(frozen=True)
class Caller:
    """Who sent a request and how its answer reaches them: the key, the channel on which this
    gateway hears that the job ended (None for an asynchronous request), the request's
    `X-Request-ID` and its `Idempotency-Key`."""

    principal: Principal
    reply_to: str | None = None
    request_id: str | None = None
    idempotency_key: str | None = None

    def idempotent(self, *parts: bytes) -> IdempotentRequest | None:
        """The request's idempotency entry, from everything that makes it this request."""
        return idempotent_request(self.principal, self.idempotency_key, *parts)


async def admit(
    options: ExplainOptions, image: bytes, caller: Caller, queue: JobQueue, settings: Settings
) -> str:
    """Validate against the model and the queue, then enqueue. Returns the job's id: a new one,
    or the job an earlier request with the same `Idempotency-Key` created."""
    info = await find_model(queue, options.model, settings)
    message, stored_image = prepare_job(options, image, info, caller, settings)
    idempotent = caller.idempotent(b"explanation", options.model_dump_json().encode(), image)
    admission = Admission([(message, stored_image)], idempotent)
    (job_id,) = await submit_jobs(admission, info, caller.principal, queue, settings)
    return job_id


def prepare_job(
    options: ExplainOptions, image: bytes, info: ModelInfo, caller: Caller, settings: Settings
) -> tuple[ExplanationJob, bytes | None]:
    """Check a request against its model and its image, and build its job and the image bytes
    to store with it (of a DICOM file, only what decoding needs; none for a `source`, which the
    worker fetches); nothing is queued. The caller's request id travels with the job to the
    worker's log and the result's `timings`."""
    check_against_model(options, info)
    dicom = check_dicomweb(options, settings.dicomweb_servers)
    if options.source is not None:
        if image:
            raise InvalidRequest("Give exactly one of `image` and `source`.")
    else:
        image = checked_image(options, image, info, settings)
    params = options.applied_params()
    check_cost(options, info, settings)
    message = ExplanationJob(
        job_id=uuid.uuid4().hex,
        model=info.id,
        methods=options.methods,
        target=options.target,
        params=params,
        output=options.output,
        dicom=dicom,
        evaluate=options.evaluate,
        # Storing is the point of a `store` request: it is never answered from the cache.
        cache_key=explanation_cache_key(options, params, image, info, caller.principal)
        if settings.result_cache and options.store is None
        else None,
        reply_to=caller.reply_to,
        enqueued_at=time.time(),
        request_id=caller.request_id,
        source=options.source,
        store=options.store,
    )
    return message, None if options.source is not None else image


def checked_image(
    options: ExplainOptions, image: bytes, info: ModelInfo, settings: Settings
) -> bytes:
    """An uploaded image checked against the request, as it is stored: of a DICOM file, only
    what decoding needs."""
    if not image:
        raise BadImage("The image is empty.")
    header = inspect_image(image, settings.max_image_pixels)
    check_dicom_options(options.dicom, header.dicom)
    check_dicom_output(options.output, header.dicom)
    check_output(options, info, header, settings)
    check_region_target(options.target, info, header)
    if header.dicom is None:
        return image
    return minimal_dicom(image, kept_dicom_elements(options.output), settings.max_image_pixels)


@dataclass(frozen=True)
class Admission:
    """What one request asks to queue: its jobs with the image bytes each stores, and its
    idempotency entry (None without an `Idempotency-Key`)."""

    jobs: Sequence[tuple[ExplanationJob, bytes | None]]
    idempotent: IdempotentRequest | None = None


async def submit_jobs(
    admission: Admission,
    info: ModelInfo,
    principal: Principal,
    queue: JobQueue,
    settings: Settings,
) -> list[str]:
    """Answer from the result cache the jobs it holds and queue the others, all in one atomic
    step, so that a worker can batch them; 503 (see `check_capacity`) or 429 (the model's queue
    cannot take them) for all of them. Returns the job ids, in order: these jobs', or those of
    the earlier request that the admission's idempotency entry names."""
    new_jobs = []
    for message, image in admission.jobs:
        cached = await queue.cached(message.cache_key) if message.cache_key else None
        answer = (
            reissued(cached, message.job_id, message.request_id) if cached is not None else None
        )
        new_jobs.append(NewJob(message, image, answer))
    to_compute = [job.message.job_id for job in new_jobs if job.answer is None]
    if to_compute:
        check_capacity(settings, info)
        await reserve_slots(principal, to_compute, queue, settings)
    job_ids = await queue.enqueue(
        new_jobs,
        principal.name,
        queue_limit=settings.queue_limit,
        idempotent=admission.idempotent,
    )
    log_admitted(new_jobs, job_ids)
    return job_ids


async def reserve_slots(
    principal: Principal, job_ids: Sequence[str], queue: JobQueue, settings: Settings
) -> None:
    """Count `job_ids` against the key's `max_jobs_per_key`, one limit for explanations and
    visualizations alike; 429 (nothing counted) when they do not fit."""
    limit = ConcurrencyLimit(
        queue.redis, settings.max_jobs_per_key, queue.record_ttl_s, settings.retry_after_s
    )
    await limit.reserve(principal.name, job_ids)


async def submit_visualization(
    message: VisualizationJob, caller: Caller, queue: JobQueue, settings: Settings
) -> str:
    """Queue an activation maximisation (429 when the model's queue is full or the key holds its
    `max_jobs_per_key`); its job id, or that of the earlier request with the same
    `Idempotency-Key`."""
    idempotent = caller.idempotent(
        b"visualization", message.model.encode(), message.visualization.model_dump_json().encode()
    )
    await reserve_slots(caller.principal, [message.job_id], queue, settings)
    new_job = NewJob(message)
    (job_id,) = await queue.enqueue(
        [new_job], caller.principal.name, queue_limit=settings.queue_limit, idempotent=idempotent
    )
    log_admitted([new_job], [job_id])
    return job_id


def log_admitted(jobs: Sequence[NewJob], job_ids: Sequence[str]) -> None:
    """One line per admitted job: queued, answered from the result cache, or replayed (the job
    an earlier request with the same `Idempotency-Key` created)."""
    for job, job_id in zip(jobs, job_ids, strict=True):
        message = job.message
        if job_id != message.job_id:
            outcome = "replayed"
        else:
            outcome = "queued" if job.answer is None else "cached"
        methods = message.methods if isinstance(message, ExplanationJob) else [ACTIVATION_MAX]
        fields = LogFields(job_id=job_id, model=message.model, methods=methods, status=outcome)
        if message.request_id is not None:
            fields["request_id"] = message.request_id
        log.info(
            "job %s %s for %s (%s)",
            job_id,
            outcome,
            message.model,
            ", ".join(methods),
            extra=log_fields(**fields),
        )


def explanation_cache_key(
    options: ExplainOptions,
    params: dict[str, dict[str, object]],
    image: bytes,
    info: ModelInfo,
    principal: Principal,
) -> str:
    """Where an identical request's result is kept. Scoped to the key that asked: another key
    could otherwise learn from a fast answer that someone sent the same image before. Scoped to
    the model too, not its weights alone: two models may share a weights file and differ in
    their manifests (the output activation, the architecture's arguments)."""
    request = json.dumps(
        {
            "key": principal.name,
            "model": {"id": info.id, "version": info.version},
            "methods": options.methods,
            "target": options.model_dump(mode="json", include={"target"})["target"],
            "params": params,
            "output": options.output.model_dump(mode="json"),
            "dicom": (options.dicom or DicomOptions()).model_dump(mode="json"),
            # A fetched instance is known by its server and UIDs (with no image bytes).
            "source": None if options.source is None else options.source.model_dump(mode="json"),
            "evaluate": options.evaluate,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(request.encode())
    digest.update(hashlib.sha256(image).digest())
    return keys.explanation_cache(info.sha256, digest.hexdigest())


def reissued(cached: bytes, job_id: str, request_id: str | None = None) -> str:
    """A cached response as the answer to a new job: its id and its request's, marked as
    cached."""
    response = json.loads(cached)
    response["job_id"] = job_id
    response["cached"] = True
    response["timings"]["request_id"] = request_id
    return json.dumps(response, separators=(",", ":"))
