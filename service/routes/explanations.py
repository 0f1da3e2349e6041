"""`POST /v1/explanations` and `POST /v1/jobs`."""

from fastapi import APIRouter, Request, Response

from schemas.jobs import JobAccepted
from service.admission import Caller, admit, read_explain_request
from service.deps import ListenerDep, QueueDep, SettingsDep, SubmitterDep
from service.idempotency import IdempotencyKeyHeader
from service.openapi import EXPLAIN_BODY, EXPLAIN_RESPONSES, SUBMIT
from service.request_ids import request_id_of
from service.waiting import WaitQuery, accepted_response, answer_when_done, wants_async

router = APIRouter(prefix="/v1", tags=["explanations"])


@router.post(
    "/explanations",
    summary="Explain one image and wait for the maps",
    openapi_extra=EXPLAIN_BODY,
    responses=EXPLAIN_RESPONSES,
)
async def create_explanation(  # noqa: PLR0913 - FastAPI injects each dependency as a parameter
    request: Request,
    principal: SubmitterDep,
    queue: QueueDep,
    listener: ListenerDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
    timeout: WaitQuery = None,
) -> Response:
    """Waits for the result (`?timeout=`, default 30 s); `Prefer: respond-async` answers 202."""
    options, image = await read_explain_request(request)
    reply_to = None if wants_async(request) else listener.channel
    caller = Caller(principal, reply_to, request_id_of(request), idempotency_key)
    job_id = await admit(options, image, caller, queue, settings)
    if reply_to is None:
        return accepted_response(request, job_id)

    wait_s = min(timeout or settings.sync_timeout_s, settings.max_sync_timeout_s)
    return await answer_when_done(queue, listener, job_id, principal.name, wait_s)


@router.post(
    "/jobs",
    summary="Queue an explanation and answer at once",
    status_code=202,
    openapi_extra=EXPLAIN_BODY,
    response_model=JobAccepted,
    responses=SUBMIT,
)
async def create_job(
    request: Request,
    principal: SubmitterDep,
    queue: QueueDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    options, image = await read_explain_request(request)
    caller = Caller(principal, None, request_id_of(request), idempotency_key)
    job_id = await admit(options, image, caller, queue, settings)
    return accepted_response(request, job_id)
