"""One exception type per kind of failure, each mapped to one problem+json answer."""

from collections.abc import Mapping, Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas import problems
from schemas.logs import REQUEST_ID_HEADER
from schemas.problems import (
    MAX_LISTED_ERRORS,
    PROBLEM_MEDIA_TYPE,
    FieldError,
    Problem,
    ProblemKind,
)

# The kinds of the errors Starlette and FastAPI raise themselves (an unknown path, a wrong method,
# a malformed multipart body); any other status keeps its HTTP phrase as title.
_FRAMEWORK_KINDS = {
    kind.status: kind
    for kind in (
        problems.BAD_REQUEST,
        problems.NOT_FOUND,
        problems.METHOD_NOT_ALLOWED,
        problems.TOO_LARGE,
        problems.UNSUPPORTED_MEDIA,
    )
}


class ApiError(Exception):
    """Base of every error the API describes; each subclass names its kind of problem."""

    kind: ProblemKind = problems.INTERNAL

    def __init__(
        self, detail: str, *, retry_after: int | None = None, job_id: str | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.job_id = job_id

    @property
    def status(self) -> int:
        return self.kind.status

    def problem(self) -> Problem:
        return self.kind.problem(self.detail, job_id=self.job_id)

    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides the problem."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BadImage(ApiError):
    kind = problems.BAD_IMAGE


class Unauthenticated(ApiError):
    kind = problems.UNAUTHENTICATED

    def headers(self) -> dict[str, str]:
        # RFC 9110 §11.6.1: a 401 names the scheme; `X-API-Key` works as well (see the README).
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="glimpse"'}


class Forbidden(ApiError):
    kind = problems.FORBIDDEN


class NotFound(ApiError):
    kind = problems.NOT_FOUND


class Conflict(ApiError):
    kind = problems.CONFLICT


class PayloadTooLarge(ApiError):
    kind = problems.TOO_LARGE


class UnsupportedMedia(ApiError):
    kind = problems.UNSUPPORTED_MEDIA


class InvalidRequest(ApiError):
    kind = problems.INVALID_REQUEST


class InvalidFields(InvalidRequest):
    """A request whose fields fail validation; carries the first of pydantic's field errors."""

    def __init__(
        self, error: ValidationError, detail: str = "The request has invalid fields."
    ) -> None:
        super().__init__(detail)
        self.error_count = error.error_count()
        # Bounded before they are listed: a body of a million unknown fields has a million errors.
        self.errors = error.errors(include_url=False, include_context=False)[:MAX_LISTED_ERRORS]

    def problem(self) -> Problem:
        return invalid(self.errors, self.detail, self.error_count)


class RateLimited(ApiError):
    kind = problems.RATE_LIMITED


class QueueFull(ApiError):
    kind = problems.QUEUE_FULL


class Unavailable(ApiError):
    kind = problems.UNAVAILABLE


class SyncTimeout(ApiError):
    kind = problems.TIMEOUT


def field_errors(errors: Sequence[object]) -> list[FieldError]:
    """Pydantic's error list as the `errors` member of a problem."""
    result = []
    for error in errors:
        assert isinstance(error, dict)
        result.append(
            FieldError(
                loc=[part for part in error.get("loc", ()) if isinstance(part, str | int)],
                msg=str(error.get("msg", "")),
                type=str(error.get("type", "")),
            )
        )
    return result


def problem_response(
    problem: Problem, retry_after: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    headers = {
        **(headers or {}),
        **({"Retry-After": str(retry_after)} if retry_after is not None else {}),
    }
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def invalid(
    errors: Sequence[object],
    detail: str = "The request has invalid fields.",
    count: int | None = None,
) -> Problem:
    """A 422 listing the first `MAX_LISTED_ERRORS` of `errors` (of `count` in all)."""
    count = len(errors) if count is None else count
    if count > MAX_LISTED_ERRORS:
        detail = f"{detail} {count} errors; the first {MAX_LISTED_ERRORS} are listed."
    return problems.INVALID_REQUEST.problem(detail, errors=field_errors(errors[:MAX_LISTED_ERRORS]))


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Every error leaves the gateway as problem+json, never as a bare 500 for bad input."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return problem_response(exc.problem(), headers=exc.headers())

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return problem_response(invalid(exc.errors()))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        phrase = HTTPStatus(exc.status_code).phrase
        kind = _FRAMEWORK_KINDS.get(exc.status_code) or ProblemKind(
            f"http-{exc.status_code}", exc.status_code, phrase
        )
        detail = str(exc.detail) if exc.detail not in (phrase, kind.title) else None
        # Starlette's 405 carries `Allow`.
        return problem_response(kind.problem(detail), headers=exc.headers)

    async def on_unexpected(request: Request, _: Exception) -> JSONResponse:
        # Sent from outside every middleware, so the request id is added here.
        request_id = request.scope.get("state", {}).get("request_id")
        problem = problems.INTERNAL.problem("The gateway failed; the error is in its log.")
        return problem_response(
            problem, headers={REQUEST_ID_HEADER: request_id} if request_id else None
        )

    async def on_redis_down(_: Request, __: Exception) -> JSONResponse:
        problem = Unavailable("The job store (Redis) is unreachable.").problem()
        return problem_response(problem, retry_after_s)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)
    app.add_exception_handler(Exception, on_unexpected)
