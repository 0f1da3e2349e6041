"""Problems become one exception type per kind: by the type slug, else by the status."""

import glimpse_client as g
import pytest
from glimpse_client.errors import problem_error


@pytest.mark.parametrize(
    ("slug", "status", "kind"),
    [
        ("bad-image", 400, g.BadImage),
        ("unauthenticated", 401, g.Unauthenticated),
        ("forbidden", 403, g.Forbidden),
        ("not-found", 404, g.NotFound),
        ("conflict", 409, g.Conflict),
        ("too-large", 413, g.TooLarge),
        ("unsupported-media-type", 415, g.UnsupportedMedia),
        ("invalid-request", 422, g.InvalidRequest),
        ("rate-limited", 429, g.RateLimited),
        ("queue-full", 429, g.QueueFull),
        ("unavailable", 503, g.Unavailable),
        ("timeout", 504, g.Timeout),
    ],
)
def test_the_type_slug_chooses_the_exception(slug: str, status: int, kind: type) -> None:
    problem = {"type": f"urn:glimpse:problem:{slug}", "title": "T", "status": status, "detail": "D"}
    error = problem_error(status, problem)
    assert type(error) is kind
    assert (error.status, error.title, error.detail, error.type) == (
        status,
        "T",
        "D",
        f"urn:glimpse:problem:{slug}",
    )


def test_the_slug_wins_over_the_status() -> None:
    # Both kinds answer 429: only the slug tells a full queue from a spent rate limit.
    problem = {"type": "urn:glimpse:problem:queue-full", "title": "Full", "status": 429}
    assert type(problem_error(429, problem)) is g.QueueFull
    assert type(problem_error(429, {"title": "Too many"})) is g.RateLimited


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, g.BadImage), (404, g.NotFound), (410, g.ClientError), (500, g.ServerError)],
)
def test_an_unknown_type_falls_back_to_the_status(status: int, kind: type) -> None:
    error = problem_error(status, {"type": "urn:glimpse:problem:attribution-failed"})
    assert type(error) is kind
    assert error.status == status


def test_4xx_kinds_are_client_errors_and_the_rest_server_errors() -> None:
    assert issubclass(g.InvalidRequest, g.ClientError)
    assert issubclass(g.QueueFull, g.ClientError)
    for kind in (g.Unavailable, g.Timeout, g.Unreachable):
        assert issubclass(kind, g.ServerError)
    assert all(issubclass(k, g.GlimpseError) for k in (g.ClientError, g.ServerError, g.JobFailed))


def test_field_errors_job_id_and_retry_after_are_kept() -> None:
    problem = {
        "type": "urn:glimpse:problem:invalid-request",
        "title": "Invalid request",
        "status": 422,
        "detail": "The request has invalid fields.",
        "errors": [{"loc": ["target"], "msg": "bad target", "type": "value_error"}, "odd"],
        "job_id": "abc",
        "extension": 1,
    }
    error = problem_error(422, problem, retry_after=3.0)
    assert [e.loc for e in error.errors] == [["target"], []]
    assert error.errors[0].msg == "bad target" and error.errors[1].msg == "odd"
    assert error.job_id == "abc" and error.retry_after == 3.0
    assert error.problem["extension"] == 1
    assert str(error).splitlines() == [
        "422 Invalid request: The request has invalid fields.",
        "  target: bad target",
        "  odd",
    ]


def test_a_body_without_detail_still_says_what_happened() -> None:
    assert problem_error(502, {}).detail == "HTTP 502"
    assert problem_error(418, {"title": "Teapot"}).detail == "Teapot"


def test_job_failed_carries_the_problem_as_its_own_kind() -> None:
    cause = problem_error(400, {"type": "urn:glimpse:problem:bad-image", "detail": "corrupt"})
    failed = g.JobFailed("job-1", cause)
    assert isinstance(failed.cause, g.BadImage)
    assert (failed.job_id, failed.status, failed.detail) == ("job-1", 400, "corrupt")
