"""`POST /v1/models/{id}/visualizations`: activation maximisation, what a model looks for."""

import hashlib
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from schemas import keys
from schemas.jobs import JobAccepted, VisualizationJob
from schemas.visualizations import VisualizationParams, VisualizationResponse
from service.admission import check_capacity, find_model, submit_visualization
from service.deps import ListenerDep, QueueDep, SettingsDep, SubmitterDep
from service.errors import InvalidRequest
from service.idempotency import IdempotencyKeyHeader
from service.openapi import problems
from service.waiting import accepted_response, answer_when_done, wants_async

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "/{model_id}/visualizations",
    summary="Synthesise the input that maximises a class or a channel",
    response_model=VisualizationResponse,
    responses={
        202: {"model": JobAccepted, "description": "Queued (with `Prefer: respond-async`)"},
        **problems(400, 401, 403, 404, 413, 422, 429, 503, 504),
    },
)
async def create_visualization(
    model_id: str,
    params: VisualizationParams,
    request: Request,
    principal: SubmitterDep,
    queue: QueueDep,
    listener: ListenerDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
    timeout: Annotated[float | None, Query(gt=0, description="seconds to wait")] = None,
) -> Response:
    """Deterministic for a seed; a repeated request is answered from the cache at once."""
    info = await find_model(queue, model_id, settings)
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
    )
    job_id = await submit_visualization(message, principal, queue, settings, idempotency_key)
    if asynchronous:
        return accepted_response(request, job_id)
    wait_s = min(timeout or settings.sync_timeout_s, settings.max_sync_timeout_s)
    return await answer_when_done(queue, listener, job_id, principal.name, wait_s)
