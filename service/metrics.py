"""`/metrics` in Prometheus' text format: this gateway's HTTP traffic and the service's work.

Two kinds of series. `glimpse_http_*` count what this gateway answered; scrape every gateway and
sum them. The rest describe the whole service as Redis holds it — queue depth and live workers
per model, workers' batch sizes, each map's compute time by method, each job's time in the
service, failures by kind, worker events — so every gateway reports the same values.
"""

import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas import metrics
from schemas.models import ModelInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_HTTP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HttpMetrics:
    """This gateway's request counter and latency histogram, by route template (not raw path,
    which would grow a series per job id) and HTTP method."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "glimpse_http_requests",
            "HTTP requests this gateway answered, by route, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "glimpse_http_request_seconds",
            "Time this gateway took to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=_HTTP_SECONDS,
            registry=self.registry,
        )


class RequestMetrics:
    """ASGI middleware that counts and times every HTTP request into `HttpMetrics`."""

    def __init__(self, app: ASGIApp, http_metrics: HttpMetrics) -> None:
        self.app = app
        self.http_metrics = http_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # FastAPI's router leaves the matched route in the scope.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.http_metrics.requests.labels(route, method, str(status)).inc()
            self.http_metrics.seconds.labels(route, method).observe(time.perf_counter() - started)


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


@dataclass(frozen=True)
class ServiceSnapshot:
    """What a gateway read out of Redis for one scrape: the registered models (with live worker
    counts), each model's queue depth, the live workers, and the `keys.METRICS` and
    `keys.STATS` hashes."""

    models: dict[str, ModelInfo]
    depths: dict[str, int]
    live_workers: int
    recorded_and_events: tuple[dict[str, str], dict[str, str]]


def exposition(http_metrics: HttpMetrics, snapshot: ServiceSnapshot | None) -> bytes:
    """The text a scrape of `/metrics` returns; without a snapshot (Redis unreachable), this
    gateway's series and `glimpse_redis_up 0`."""
    up = GaugeMetricFamily(
        "glimpse_redis_up",
        "Whether this gateway could read the service's state from Redis.",
        value=0 if snapshot is None else 1,
    )
    families: list[Metric] = [up]
    if snapshot is not None:
        families += _service_families(snapshot)
    service = CollectorRegistry()
    service.register(_Snapshot(families))
    return generate_latest(http_metrics.registry) + generate_latest(service)


def _service_families(snapshot: ServiceSnapshot) -> list[Metric]:
    recorded, events = snapshot.recorded_and_events
    families: list[Metric] = []

    depth = GaugeMetricFamily(
        "glimpse_queue_depth", "Jobs queued or in a worker's hands, by model.", labels=["model"]
    )
    workers = GaugeMetricFamily(
        "glimpse_model_workers", "Live workers serving each model.", labels=["model"]
    )
    for model_id, info in sorted(snapshot.models.items()):
        depth.add_metric([model_id], snapshot.depths.get(model_id, 0))
        workers.add_metric([model_id], info.live_workers)
    families += [depth, workers]
    families.append(
        GaugeMetricFamily(
            "glimpse_workers", "Workers with a fresh heartbeat.", value=snapshot.live_workers
        )
    )

    for spec in metrics.HISTOGRAMS:
        histogram = HistogramMetricFamily(spec.name, spec.help, labels=[spec.label])
        for label_value, values in sorted(spec.read(recorded).items()):
            buckets = [(bound, float(count)) for bound, count in values.buckets.items()]
            histogram.add_metric(
                [label_value], [*buckets, ("+Inf", float(values.count))], values.sum
            )
        families.append(histogram)

    failed = CounterMetricFamily(
        metrics.JOBS_FAILED.name.removesuffix("_total"),
        metrics.JOBS_FAILED.help,
        labels=[metrics.JOBS_FAILED.label],
    )
    for kind, failures in sorted(metrics.JOBS_FAILED.read(recorded).items()):
        failed.add_metric([kind], failures)
    families.append(failed)

    worker_events = CounterMetricFamily(
        "glimpse_worker_events",
        "Worker events: results stored, duplicates dropped, jobs failed, batches split.",
        labels=["event"],
    )
    for event, total in sorted(events.items()):
        worker_events.add_metric([event], int(total))
    families.append(worker_events)
    return families
