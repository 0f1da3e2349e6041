"""`GET /v1/jobs/{id}` and `DELETE /v1/jobs/{id}`."""

from fastapi import APIRouter

from schemas.jobs import JobState, JobStatus
from service.deps import ExplainerDep, QueueDep
from service.errors import Conflict, NotFound
from service.openapi import CANCEL, READ_ONE
from service.waiting import JOBS_PREFIX

router = APIRouter(prefix=JOBS_PREFIX, tags=["jobs"])


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"No job {job_id!r} for this key (it may have expired).")


@router.get("/{job_id}", name="get_job", response_model=JobStatus, responses=READ_ONE)
async def get_job(job_id: str, principal: ExplainerDep, queue: QueueDep) -> JobStatus:
    """The job's state, with its result or error once it has finished."""
    status = await queue.status(job_id, principal.name)
    if status is None:
        raise _not_found(job_id)
    return status


@router.delete("/{job_id}", response_model=JobStatus, responses=CANCEL)
async def cancel_job(job_id: str, principal: ExplainerDep, queue: QueueDep) -> JobStatus:
    """Cancel a queued job; 409 when it already runs or has ended."""
    previous = await queue.cancel(job_id, principal.name)
    status = await queue.status(job_id, principal.name) if previous is not None else None
    if previous is None or status is None:
        raise _not_found(job_id)
    if previous is not JobState.QUEUED:
        raise Conflict(f"The job is {previous.value}; only a queued job can be cancelled.")
    return status
