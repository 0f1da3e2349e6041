"""`GET /metrics`: Prometheus text (`service.metrics`)."""

from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from service.deps import AdminDep, QueueDep
from service.metrics import CONTENT_TYPE, HttpMetrics, ServiceSnapshot, exposition
from service.openapi import problems

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format 0.0.4"},
        **problems(401, 403),
    },
)
async def metrics_text(request: Request, _: AdminDep, queue: QueueDep) -> Response:
    """This gateway's HTTP requests and latency, and the service's queue depth per model, live
    workers, batch sizes, map compute time per method, job time per model and failures by kind
    (needs the `admin` scope). With Redis unreachable, only this gateway's own series and
    `glimpse_redis_up 0`."""
    http_metrics: HttpMetrics = request.app.state.http_metrics
    try:
        models = await queue.models()
        snapshot: ServiceSnapshot | None = ServiceSnapshot(
            models=models,
            depths=await queue.depths(sorted(models)),
            live_workers=await queue.live_workers(),
            recorded_and_events=await queue.recorded_metrics(),
        )
    except (RedisError, OSError):
        snapshot = None
    return Response(exposition(http_metrics, snapshot), media_type=CONTENT_TYPE)
