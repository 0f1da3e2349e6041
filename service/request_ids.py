"""Every request's id: taken from the caller or made, returned on the answer, logged with it."""

import logging
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.logs import REQUEST_ID_HEADER, log_context, log_fields, request_id_from

HEALTH_PROBES = frozenset({"/healthz", "/readyz"})
"""Left out of the access log, which they would bury."""

_HEADER = REQUEST_ID_HEADER.lower().encode()

access_log = logging.getLogger("glimpse.access")


def request_id_of(request: Request) -> str:
    """The id `RequestIds` gave this request."""
    request_id: str = request.scope["state"]["request_id"]
    return request_id


class RequestIds:
    """ASGI middleware, outermost: the request's `X-Request-ID` when the caller sent a valid one
    (`schemas.logs.is_valid_request_id`), else a new one, in `request.state.request_id`, on
    every answer and on every line logged while answering; with `enabled_access_log`, one line
    per request (method, path without its query, status, duration)."""

    def __init__(self, app: ASGIApp, enabled_access_log: bool) -> None:
        self.app = app
        self.enabled_access_log = enabled_access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == _HEADER), None)
        request_id = request_id_from(given.decode("latin-1") if given is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (_HEADER, request_id.encode())
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.enabled_access_log and scope["path"] not in HEALTH_PROBES:
                    _log(scope, request_id, status, (time.perf_counter() - started) * 1000)


def _log(scope: Scope, request_id: str, status: int, duration_ms: float) -> None:
    """The access line: never the query string, whose values may be secrets."""
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else "-"
    method, path = scope["method"], scope["path"]
    version = scope.get("http_version", "1.1")
    access_log.info(
        '%s "%s %s HTTP/%s" %d %.1f ms',
        address,
        method,
        path,
        version,
        status,
        duration_ms,
        extra=log_fields(
            request_id=request_id,
            method=method,
            path=path,
            status=status,
            duration_ms=round(duration_ms, 3),
            client=address,
        ),
    )
