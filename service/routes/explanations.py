"""`POST /v1/explanations` and `POST /v1/jobs`."""

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from schemas.jobs import JobAccepted, JobState
from schemas.problems import Problem
from service.admission import admit, read_explain_request
from service.deps import ListenerDep, QueueDep, SettingsDep, SubmitterDep
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
    principal: SubmitterDep,
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
        stored = await queue.record(message.job_id, principal.name)
        if stored is None or not stored.state.finished:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished, timeout=wait_s)
            stored = await queue.record(message.job_id, principal.name)
    finally:
        listener.forget(message.job_id)
    if stored is None or not stored.state.finished:
        raise SyncTimeout(
            f"The job is still {stored.state.value if stored else 'pending'}; "
            f"poll /v1/jobs/{message.job_id}.",
            job_id=message.job_id,
        )
    if stored.state is JobState.SUCCEEDED and stored.result_json is not None:
        # Passed through as the worker stored it: parsing and re-serialising costs milliseconds.
        return Response(stored.result_json, media_type="application/json")
    if stored.error_json is not None:
        return problem_response(Problem.model_validate_json(stored.error_json))
    raise ApiError(f"The job ended as {stored.state.value}.", job_id=message.job_id)


@router.post(
    "/jobs",
    summary="Queue an explanation and answer at once",
    status_code=202,
    openapi_extra=EXPLAIN_BODY,
    response_model=JobAccepted,
)
async def create_job(
    request: Request,
    principal: SubmitterDep,
    queue: QueueDep,
    settings: SettingsDep,
) -> Response:
    options, image = await read_explain_request(request)
    message = await admit(options, image, principal, queue, settings, reply_to=None)
    return _accepted(request, message.job_id)
