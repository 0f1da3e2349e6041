"""Shared resources and auth as FastAPI dependencies."""

from typing import Annotated

from fastapi import Depends, Header, Request

from service.auth import ANONYMOUS, KeyStore, Principal
from service.config import Settings
from service.queue import CompletionListener, JobQueue


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def get_listener(request: Request) -> CompletionListener:
    listener: CompletionListener = request.app.state.listener
    return listener


def get_principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    settings: Settings = request.app.state.settings
    if not settings.auth:
        return ANONYMOUS
    store: KeyStore = request.app.state.keys
    return store.authenticate(authorization, x_api_key)


def explainer(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    principal.require("explain")
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
ListenerDep = Annotated[CompletionListener, Depends(get_listener)]
ExplainerDep = Annotated[Principal, Depends(explainer)]
