"""`POST /v1/models/{id}/visualizations`: activation maximisation, what a model looks for."""

import hashlib
import time
import uuid

from fastapi import APIRouter, Request, Response

from schemas import keys
from schemas.jobs import JobAccepted, VisualizationJob
from schemas.visualizations import VisualizationParams, VisualizationResponse
from service.admission import Caller, check_capacity, find_model, submit_visualization
from service.body import parse_json
from service.deps import ListenerDep, QueueDep, SettingsDep, SubmitterDep
from service.errors import InvalidRequest, UnsupportedMedia
from service.idempotency import IdempotencyKeyHeader
from service.openapi import VISUALIZATION_BODY, problems
from service.request_ids import request_id_of
from service.waiting import WaitQuery, accepted_response, answer_when_done, wants_async

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "/{model_id}/visualizations",
    summary="Synthesise the input that maximises a class or a channel",
    openapi_extra=VISUALIZATION_BODY,
    response_model=VisualizationResponse,
    responses={
        202: {"model": JobAccepted, "description": "Queued (with `Prefer: respond-async`)"},
        **problems(400, 401, 403, 404, 413, 415, 422, 429, 503, 504),
    },
)
async def create_visualization(  # noqa: PLR0913 - FastAPI injects each dependency as a parameter
    model_id: str,
    request: Request,
    principal: SubmitterDep,
    queue: QueueDep,
    listener: ListenerDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
    timeout: WaitQuery = None,
) -> Response:
    """Deterministic for a seed; a repeated request is answered from the cache at once."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMedia("Send the visualization request as application/json.")
    params = await parse_json(request, VisualizationParams)
    info = await find_model(queue, model_id, settings)
    if params.target is not None and info.task == "segmentation":
        raise InvalidRequest(
            f"{info.id!r} is a segmentation model: a class is a map of pixels, with no one score "
            "to maximise; give a layer and a channel."
        )
    if params.target is not None and params.target >= len(info.labels):
        raise InvalidRequest(
            f"Class index {params.target} is out of range: {info.id!r} has "
            f"{len(info.labels)} classes (0–{len(info.labels) - 1})."
        )
    digest = hashlib.sha256(params.model_dump_json().encode()).hexdigest()
    cache_key = keys.visualization_cache(info.sha256, digest)
    cached = await queue.cached(cache_key)
    if cached is not None:
        return Response(cached, media_type="application/json")

    check_capacity(settings, info)
    asynchronous = wants_async(request)
    message = VisualizationJob(
        job_id=uuid.uuid4().hex,
        model=info.id,
        visualization=params,
        cache_key=cache_key,
        reply_to=None if asynchronous else listener.channel,
        enqueued_at=time.time(),
        request_id=request_id_of(request),
    )
    caller = Caller(principal, message.reply_to, message.request_id, idempotency_key)
    job_id = await submit_visualization(message, caller, queue, settings)
    if asynchronous:
        return accepted_response(request, job_id)
    wait_s = min(timeout or settings.sync_timeout_s, settings.max_sync_timeout_s)
    return await answer_when_done(queue, listener, job_id, principal.name, wait_s)
