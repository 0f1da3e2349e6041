"""`POST /v1/explanations` and `POST /v1/jobs`."""

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from schemas.jobs import JobAccepted, JobState
from service.admission import admit, read_explain_request
from service.deps import ExplainerDep, ListenerDep, QueueDep, SettingsDep
from service.errors import ApiError, SyncTimeout, problem_response
from service.openapi import EXPLAIN_BODY, EXPLAIN_RESPONSES

router = APIRouter(prefix="/v1", tags=["explanations"])


def _accepted(request: Request, job_id: str) -> JSONResponse:
    url = str(request.url_for("get_job", job_id=job_id).path)
    body = JobAccepted(job_id=job_id, status=JobState.QUEUED, url=url)
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=202,
        headers={"Location": url, "Preference-Applied": "respond-async"},
    )


@router.post(
    "/explanations",
    summary="Explain one image and wait for the maps",
    openapi_extra=EXPLAIN_BODY,
    responses=EXPLAIN_RESPONSES,
)
async def create_explanation(
    request: Request,
    principal: ExplainerDep,
    queue: QueueDep,
    listener: ListenerDep,
    settings: SettingsDep,
    timeout: Annotated[float | None, Query(gt=0, description="seconds to wait")] = None,
) -> Response:
    """Waits for the result (`?timeout=`, default 30 s); `Prefer: respond-async` answers 202."""
    options, image = await read_explain_request(request)
    if "respond-async" in request.headers.get("prefer", "").lower():
        message = await admit(options, image, principal, queue, settings, reply_to=None)
        return _accepted(request, message.job_id)

    wait_s = min(timeout or settings.sync_timeout_s, settings.max_sync_timeout_s)
    message = await admit(options, image, principal, queue, settings, reply_to=listener.channel)
    finished = listener.expect(message.job_id)
    # Re-read after registering: a job that finished before then sent its note to no one.
    try:
        status = await queue.status(message.job_id, principal.name)
        if status is None or not status.status.finished:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished, timeout=wait_s)
            status = await queue.status(message.job_id, principal.name)
    finally:
        listener.forget(message.job_id)
    if status is None or not status.status.finished:
        raise SyncTimeout(
            f"The job is still {status.status.value if status else 'pending'}; "
            f"poll /v1/jobs/{message.job_id}.",
            job_id=message.job_id,
        )
    if status.status is JobState.SUCCEEDED and status.result is not None:
        return JSONResponse(status.result.model_dump(mode="json"))
    if status.error is not None:
        return problem_response(status.error)
    raise ApiError(f"The job ended as {status.status.value}.", job_id=message.job_id)


@router.post(
    "/jobs",
    summary="Queue an explanation and answer at once",
    status_code=202,
    openapi_extra=EXPLAIN_BODY,
    response_model=JobAccepted,
)
async def create_job(
    request: Request,
    principal: ExplainerDep,
    queue: QueueDep,
    settings: SettingsDep,
) -> Response:
    options, image = await read_explain_request(request)
    message = await admit(options, image, principal, queue, settings, reply_to=None)
    return _accepted(request, message.job_id)
