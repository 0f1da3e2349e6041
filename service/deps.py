"""Shared resources and auth as FastAPI dependencies."""

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.auth import ANONYMOUS, KeyStore, Principal
from service.config import Settings
from service.queue import CompletionListener, JobQueue


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


async def get_listener(request: Request) -> CompletionListener:
    listener: CompletionListener = request.app.state.listener
    return listener


# Either header carries the key; as security schemes they give the OpenAPI document its
# `securitySchemes` and each operation that takes a key its `security`.
bearer_key = HTTPBearer(
    scheme_name="bearer",
    description="An API key as `Authorization: Bearer <key>`.",
    auto_error=False,
)
header_key = APIKeyHeader(
    name="X-API-Key", scheme_name="apiKey", description="An API key.", auto_error=False
)


async def get_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_key)],
    api_key: Annotated[str | None, Security(header_key)],
) -> Principal:
    settings: Settings = request.app.state.settings
    if not settings.auth:
        return ANONYMOUS
    store: KeyStore = request.app.state.keys
    return store.authenticate(bearer.credentials if bearer else None, api_key)


async def explainer(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    principal.require("explain")
    return principal


async def administrator(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    principal.require("admin")
    return principal


async def rate_limited_explainer(
    request: Request, principal: Annotated[Principal, Depends(explainer)]
) -> Principal:
    """An explainer within its per-minute budget: the key's own limit, else the service's."""
    settings: Settings = request.app.state.settings
    limit = principal.rate_limit_per_minute or settings.rate_limit_per_minute
    if limit:
        queue: JobQueue = request.app.state.queue
        await queue.spend_rate(principal.name, limit)
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
ListenerDep = Annotated[CompletionListener, Depends(get_listener)]
ExplainerDep = Annotated[Principal, Depends(explainer)]
AdminDep = Annotated[Principal, Depends(administrator)]
SubmitterDep = Annotated[Principal, Depends(rate_limited_explainer)]
