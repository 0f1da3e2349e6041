"""The synchronous half of the API: wait for a queued job and answer with its outcome."""

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Annotated

from fastapi import Query, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.jobs import JobAccepted, JobState
from schemas.problems import Problem
from service.errors import ApiError, SyncTimeout, problem_response
from service.queue import CompletionListener, JobQueue, StoredJob

JOBS_PREFIX = "/v1/jobs"
JOB_PATH = JOBS_PREFIX + "/{job_id}"
"""Where a job is polled (`GET`) and cancelled (`DELETE`)."""

MIN_WAIT_S = 0.1
WaitQuery = Annotated[
    float | None,
    Query(
        ge=MIN_WAIT_S,
        allow_inf_nan=False,
        description=f"seconds to wait, at least {MIN_WAIT_S}; the server caps it",
    ),
]
"""`?timeout=`: shorter waits are refused (422) before anything is queued, as they could only
answer 504 for a job that still runs."""


def accepted_response(request: Request, job_id: str) -> JSONResponse:
    """`202` with the job's URL, for `Prefer: respond-async` and `POST /v1/jobs`."""
    # Built by hand: Starlette's url_for searches every route and cost a quarter millisecond.
    url = f"{request.scope.get('root_path', '')}{JOB_PATH.format(job_id=job_id)}"
    body = JobAccepted(job_id=job_id, status=JobState.QUEUED, url=url)
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=202,
        headers={"Location": url, "Preference-Applied": "respond-async"},
    )


def wants_async(request: Request) -> bool:
    return "respond-async" in request.headers.get("prefer", "").lower()


async def answer_when_done(
    queue: JobQueue, listener: CompletionListener, job_id: str, owner: str, wait_s: float
) -> Response:
    """The job's result (200) or error (its problem), once it finishes; 504 after `wait_s`.

    The job must have been queued with `reply_to=listener.channel`.
    """
    (stored,) = await records_when_done(queue, listener, [job_id], owner, wait_s)
    if stored is None or not stored.state.finished:
        raise SyncTimeout(
            f"The job is still {stored.state.value if stored else 'pending'}; "
            f"poll /v1/jobs/{job_id}.",
            job_id=job_id,
        )
    if stored.state is JobState.SUCCEEDED and stored.result_json is not None:
        # Passed through as the worker stored it: parsing and re-serialising costs milliseconds.
        return Response(stored.result_json, media_type="application/json")
    if stored.error_json is not None:
        return problem_response(Problem.model_validate_json(stored.error_json))
    raise ApiError(f"The job ended as {stored.state.value}.", job_id=job_id)


async def records_when_done(
    queue: JobQueue, listener: CompletionListener, job_ids: Sequence[str], owner: str, wait_s: float
) -> list[StoredJob | None]:
    """Each job's record once all have finished, or as they stand when `wait_s` runs out.

    The jobs must have been queued with `reply_to=listener.channel`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    finished = {job_id: listener.expect(job_id) for job_id in job_ids}
    records: list[StoredJob | None] = []
    try:
        for job_id in job_ids:
            # Read after registering: a job that finished before then sent its note to no one.
            stored = await _record(queue, job_id, owner, deadline)
            if stored is None or not stored.state.finished:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished[job_id], timeout=deadline - loop.time())
                stored = await _record(queue, job_id, owner, deadline)
            records.append(stored)
    finally:
        for job_id in job_ids:
            listener.forget(job_id)
    return records


async def _record(queue: JobQueue, job_id: str, owner: str, deadline: float) -> StoredJob | None:
    """The job's record, asked again while Redis is unreachable until `deadline` (loop time);
    None when it never answers: the job exists, so the caller answers 504 with its id, never a
    503 that would have a client submit it again."""
    loop = asyncio.get_running_loop()
    delay = 0.05
    while True:
        try:
            return await queue.record(job_id, owner)
        except (RedisConnectionError, RedisTimeoutError):
            if loop.time() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)
