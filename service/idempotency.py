"""`Idempotency-Key`: a retried request gets the jobs its first attempt created, not new ones.

The key is the client's own token, scoped to the API key that sent it; it is stored (as a digest,
like the caller's name) with a digest of the request and the job ids, for as long as the jobs'
records live. The token is never logged.
"""

import hashlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header

from schemas import keys
from service.auth import Principal
from service.errors import InvalidRequest

MAX_KEY_LENGTH = 255

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        pattern=r"^[\x21-\x7e]+$",
        description="A token of the client's choosing (a UUID, say) that makes a retry safe: "
        "a request repeating an earlier one's key and body, by the same API key, is answered "
        "with that request's job (same `job_id`) instead of queueing a new one. The same key "
        "with another body is refused with 422.",
    ),
]


@dataclass(frozen=True)
class IdempotentRequest:
    """Where a request's admission is remembered (`redis_key`) and what it asked (`digest`)."""

    redis_key: str
    digest: str


class IdempotencyKeyReused(InvalidRequest):
    """An `Idempotency-Key` already used by this API key for a different request."""

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used with a different request; "
            "choose a new key for a new request."
        )


def idempotent_request(
    principal: Principal, idempotency_key: str | None, *parts: bytes
) -> IdempotentRequest | None:
    """The request's idempotency entry, from everything that makes it this request (`parts`:
    the route's kind, the model, the options and the image); None without the header."""
    if idempotency_key is None:
        return None
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return IdempotentRequest(
        redis_key=keys.idempotency(_sha256(principal.name), _sha256(idempotency_key)),
        digest=digest.hexdigest(),
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
