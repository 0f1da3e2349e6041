"""`GET /healthz` and `GET /readyz`."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import QueueDep, SettingsDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: Redis unreachable or no live worker"}},
)
async def readyz(queue: QueueDep, settings: SettingsDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker has a fresh heartbeat."""
    redis_ok = await queue.ping()
    workers = await queue.live_workers() if redis_ok else 0
    ready = redis_ok and workers > 0
    return JSONResponse(
        {"ready": ready, "redis": redis_ok, "live_workers": workers},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": str(settings.retry_after_s)},
    )
