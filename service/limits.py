"""A pure ASGI guard that refuses oversized bodies before they are read whole."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.problems import PROBLEM_MEDIA_TYPE
from service.errors import PayloadTooLarge


class BodySizeLimit:
    """413 from the Content-Length header at once, or as soon as a streamed body passes the limit.

    A streamed body that runs over raises PayloadTooLarge inside the endpoint that reads it,
    which the error handlers turn into the same 413 answer.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"The body exceeds {self.max_bytes} bytes.")
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send: Send) -> None:
        problem = PayloadTooLarge(f"The body exceeds {self.max_bytes} bytes.").problem()
        body = problem.model_dump_json(exclude_none=True).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
