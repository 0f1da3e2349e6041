"""Reading a request's JSON so that no single body holds up the gateway.

Every route reads its body only after the key is checked and its rate spent (dependencies run
first), refuses a body with more JSON members and items than any request needs by counting its
bytes as they arrive, before anything is parsed, and parses and validates it in a worker thread.
"""

from typing import TypeVar

import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel, ValidationError

from service.errors import InvalidFields, InvalidRequest

MAX_JSON_SEPARATORS = 10_000
"""Commas and colons a JSON body (or a form's JSON field) may hold. The largest request (a KServe
batch of 64 instances with their options) needs a few thousand; base64 has none. Counted on the
raw bytes (a memchr over the body, milliseconds for 30 MB), so a body of millions of fields is
refused before parsing would build them, or validation would list an error for each."""

Model = TypeVar("Model", bound=BaseModel)


class TooManyFields(InvalidRequest):
    """JSON with more separators than any request needs; the connection is closed after the
    answer, so that the rest of such a body is not read."""

    def __init__(self, separators: int, where: str) -> None:
        super().__init__(
            f"{where} holds {separators} or more JSON separators (commas and colons), more than "
            f"the {MAX_JSON_SEPARATORS} any request needs: too many fields or list items."
        )

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Connection": "close"}


def check_json_size(data: bytes, where: str = "The body") -> None:
    """422 for JSON with more than `MAX_JSON_SEPARATORS` commas and colons."""
    separators = data.count(b",") + data.count(b":")
    if separators > MAX_JSON_SEPARATORS:
        raise TooManyFields(separators, where)


async def read_json_body(request: Request) -> bytes:
    """The body, counted as it arrives: refused (`TooManyFields`) as soon as it passes the
    budget, without waiting for the rest."""
    chunks: list[bytes] = []
    separators = 0
    async for chunk in request.stream():
        separators += chunk.count(b",") + chunk.count(b":")
        if separators > MAX_JSON_SEPARATORS:
            raise TooManyFields(separators, "The body")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(request: Request, model: type[Model]) -> Model:
    """The body validated as `model`, off the event loop; 422 (`InvalidFields`) when it is not."""
    data = await read_json_body(request)
    try:
        return await anyio.to_thread.run_sync(model.model_validate_json, data)
    except ValidationError as exc:
        raise InvalidFields(exc) from exc
