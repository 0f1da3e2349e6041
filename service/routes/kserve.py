"""`POST /v1/models/{id}:explain`: KServe's v1 explain protocol on the explain path.

Each instance becomes its own job, admitted as `POST /v1/explanations` admits one and queued with
the others in one transaction, so that the workers batch them; the answer waits for all.
"""

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response

from schemas.explain import ExplainResponse
from schemas.jobs import ExplanationJob, JobState
from schemas.kserve import KServeExplainRequest, KServeExplainResponse
from schemas.models import ModelInfo
from schemas.problems import Problem
from service.admission import Admission, Caller, find_model, prepare_job, submit_jobs
from service.body import parse_json
from service.config import Settings
from service.deps import ListenerDep, QueueDep, SettingsDep, SubmitterDep
from service.errors import ApiError, InvalidFields, SyncTimeout, UnsupportedMedia, problem_response
from service.idempotency import IdempotencyKeyHeader
from service.images import decode_base64_image
from service.openapi import SUBMIT, problems
from service.queue import StoredJob
from service.request_ids import request_id_of
from service.waiting import JOB_PATH, WaitQuery, records_when_done

router = APIRouter(prefix="/v1", tags=["kserve"])

# `curl -d @body.json`, as KServe's examples send it, says form-urlencoded; no header means JSON.
_JSON_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded", ""})

_BODY: dict[str, object] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/KServeExplainRequest"}}
        },
    }
}


@router.post(
    "/models/{model_id}:explain",
    summary="Explain images as KServe's v1 protocol asks, and wait for the maps",
    openapi_extra=_BODY,
    response_model=KServeExplainResponse,
    responses={**SUBMIT, **problems(504)},
)
async def kserve_explain(  # noqa: PLR0913 - FastAPI injects each dependency as a parameter
    model_id: str,
    request: Request,
    principal: SubmitterDep,
    queue: QueueDep,
    listener: ListenerDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
    timeout: WaitQuery = None,
) -> Response:
    """`{"instances": [{"image": …, "target"?, "dicom"?}], "parameters": {…}}` → one entry per
    instance in `predictions` and `explanations`. A bad instance is refused with the request,
    before any is queued, and the problem names it (`instances[i]`)."""
    info = await find_model(queue, model_id, settings)
    payload = await _read_request(request)
    wait_s = min(timeout or settings.sync_timeout_s, settings.max_sync_timeout_s)
    caller = Caller(principal, listener.channel, request_id_of(request), idempotency_key)
    jobs = [
        _prepare_instance(payload, index, info, caller, settings)
        for index in range(len(payload.instances))
    ]
    body = payload.model_dump_json().encode()
    admission = Admission(jobs, caller.idempotent(b"kserve", model_id.encode(), body))
    job_ids = await submit_jobs(admission, info, principal, queue, settings)
    records = await records_when_done(queue, listener, job_ids, principal.name, wait_s)
    return _answer(job_ids, records)


async def _read_request(request: Request) -> KServeExplainRequest:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise UnsupportedMedia("Send the KServe request as application/json.")
    try:
        return await parse_json(request, KServeExplainRequest)
    except InvalidFields as exc:
        first = exc.errors[0]
        exc.detail = f"{_field_path(first['loc'])}: {first['msg']}"
        raise


def _field_path(loc: Sequence[int | str]) -> str:
    """`("instances", 1, "target")` as `instances[1].target`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path or "body"


def _prepare_instance(
    payload: KServeExplainRequest, index: int, info: ModelInfo, caller: Caller, settings: Settings
) -> tuple[ExplanationJob, bytes | None]:
    instance = payload.instances[index]
    try:
        image = decode_base64_image(instance.image)
        options = payload.options(info.id, instance)
        return prepare_job(options, image, info, caller, settings)
    except ApiError as exc:
        exc.detail = f"instances[{index}]: {exc.detail}"
        raise


def _answer(job_ids: list[str], records: list[StoredJob | None]) -> Response:
    """The combined answer; else the first failed instance's problem; else 504 naming every job
    still unfinished."""
    results: list[ExplainResponse] = []
    pending: list[int] = []
    for index, (job_id, stored) in enumerate(zip(job_ids, records, strict=True)):
        if stored is None or not stored.state.finished:
            pending.append(index)
        elif stored.state is JobState.SUCCEEDED and stored.result_json is not None:
            results.append(ExplainResponse.model_validate_json(stored.result_json))
        elif stored.error_json is not None:
            problem = Problem.model_validate_json(stored.error_json)
            problem.detail = f"instances[{index}]: {problem.detail or problem.title}"
            return problem_response(problem)
        else:
            raise ApiError(
                f"instances[{index}]: the job ended as {stored.state.value}.", job_id=job_id
            )
    if pending:
        unfinished = [job_ids[index] for index in pending]
        timed_out = SyncTimeout(
            f"Instances {', '.join(map(str, pending))} of {len(job_ids)} are still being "
            f"explained; poll {JOB_PATH} for each of `job_ids`.",
            job_id=unfinished[0],
        ).problem()
        return problem_response(
            Problem.model_validate({**timed_out.model_dump(), "job_ids": unfinished})
        )
    answer = KServeExplainResponse(
        predictions=[result.predictions for result in results],
        explanations=[result.explanations for result in results],
        model=results[0].model,
        job_ids=job_ids,
    )
    return Response(answer.model_dump_json(), media_type="application/json")
