"""The FastAPI application: routers, error handlers, shared resources."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from schemas import SERVICE_VERSION
from schemas.dicomweb import load_dicomweb_servers
from schemas.logs import REQUEST_ID_HEADER
from schemas.sealing import PayloadSealer
from service.auth import KeyStore
from service.config import Settings, get_settings
from service.errors import install_error_handlers
from service.limits import BodySizeLimit
from service.metrics import HttpMetrics, RequestMetrics
from service.openapi import (
    component_schemas,
    install_docs_page,
    use_problem_for_validation_errors,
)
from service.queue import CompletionListener, JobQueue
from service.redis_connection import gateway_redis
from service.request_ids import RequestIds
from service.routes import explanations, health, jobs, kserve, metrics, models, visualizations

log = logging.getLogger("glimpse.gateway")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build a gateway; settings come from the environment unless given."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First, so that a gateway without its payload key refuses to start (PayloadKeyError).
        sealer = PayloadSealer.from_key_file(settings.payload_key_file)
        load_dicomweb_servers(settings.dicomweb_servers)  # a malformed file stops the start
        redis = gateway_redis(
            settings.redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            health_check_interval=15,
        )
        listener = CompletionListener(redis)
        app.state.settings = settings
        app.state.keys = KeyStore.from_file(settings.api_keys_file)
        app.state.queue = JobQueue(
            redis,
            sealer=sealer,
            result_ttl_s=settings.result_ttl_s,
            worker_timeout_s=settings.worker_timeout_s,
            retry_after_s=settings.retry_after_s,
            replica_acks=settings.redis_replica_acks,
        )
        app.state.listener = listener
        await listener.start()
        if not settings.auth:
            log.warning("authentication is DISABLED (GLIMPSE_AUTH=off): every caller is trusted")
        try:
            yield
        finally:
            await listener.stop()
            await redis.aclose()

    app = FastAPI(
        title="Glimpse",
        version=SERVICE_VERSION,
        summary="Attribution maps for image classifiers, over HTTP.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,  # see service.openapi
    )
    install_error_handlers(app, settings.retry_after_s)
    for router in (
        explanations.router,
        kserve.router,
        jobs.router,
        models.router,
        visualizations.router,
        health.router,
        metrics.router,
    ):
        app.include_router(router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo_page() -> str:
        return resources.files("service").joinpath("static/index.html").read_text()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                component_schemas()
            )
            use_problem_for_validation_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_docs_page(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Outermost, so that it also counts what the other middleware answers (a 413, a CORS reply).
    app.state.http_metrics = HttpMetrics()
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Prefer",
                "Idempotency-Key",
                REQUEST_ID_HEADER,
            ],
            expose_headers=["Location", "Retry-After", "Preference-Applied", REQUEST_ID_HEADER],
        )
    app.add_middleware(RequestMetrics, http_metrics=app.state.http_metrics)
    # Outermost of all: every answer, whoever gives it, carries the request's id.
    app.add_middleware(RequestIds, enabled_access_log=settings.access_log)
    return app
