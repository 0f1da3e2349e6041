"""The HTTP calls of the API, built and read the same way by `Client` and `AsyncClient`."""

import base64
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import httpx

from glimpse_client.errors import GlimpseError, ServerError, Timeout, Unreachable, problem_error
from glimpse_client.images import DicomwebInstance, ExplainInput, image_bytes
from glimpse_client.retry import RETRY_STATUSES, Retry, parse_retry_after
from glimpse_client.version import VERSION

log = logging.getLogger("glimpse_client")

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
WAIT_MARGIN_S = 10.0
"""Beyond a server-side wait (`?timeout=`), how long the client still waits for the answer."""

Target: TypeAlias = str | int | Sequence[int] | Mapping[str, Any]
"""`"top1"`…`"top5"`, a class index, a list of them, or a region target of a segmentation model."""


@dataclass(frozen=True)
class Call:
    """One request: what to send and how long to wait for the answer."""

    method: str
    path: str
    json: object = None
    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None


def base_url(url: str | None) -> str:
    return (url or os.environ.get("GLIMPSE_URL") or DEFAULT_URL).rstrip("/")


def headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("GLIMPSE_API_KEY")
    sent = {"User-Agent": f"glimpse-client/{VERSION}", "Accept": "application/json"}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return sent


def explain_body(  # noqa: PLR0913 - one parameter per field of the request
    image: ExplainInput,
    model: str,
    methods: str | Sequence[str],
    target: Target,
    params: Mapping[str, Mapping[str, Any]] | None,
    output: Mapping[str, Any] | None,
    dicom: Mapping[str, Any] | None,
    evaluate: bool = False,
    store: str | None = None,
) -> dict[str, Any]:
    """The JSON body of an explain request: the image's bytes as `image`, or a DICOMweb
    instance as `source`. Scores come as base64 float32 unless `output` asks otherwise: a
    quarter of the bytes of JSON numbers, and exact."""
    body: dict[str, Any] = {
        "model": model,
        **_image_or_source(image),
        "methods": [methods] if isinstance(methods, str) else list(methods),
        "target": _target_json(target),
        "output": {"scores": "base64", **(output or {})},
    }
    if params:
        body["params"] = {method: dict(values) for method, values in params.items()}
    if dicom is not None:
        body["dicom"] = dict(dicom)
    if evaluate:
        body["evaluate"] = True
    if store is not None:
        body["store"] = {"dicomweb": store}
    return body


def _image_or_source(image: ExplainInput) -> dict[str, Any]:
    if isinstance(image, DicomwebInstance):
        return {"source": dataclasses.asdict(image)}
    return {"image": base64.b64encode(image_bytes(image)).decode("ascii")}


def _target_json(target: Target) -> object:
    if isinstance(target, str | int):
        return target
    if isinstance(target, Mapping):
        return dict(target)
    return list(target)


def explain_call(body: dict[str, Any], timeout: float | None) -> Call:
    if timeout is None:
        return Call("POST", "/v1/explanations", json=body)
    return Call(
        "POST",
        "/v1/explanations",
        json=body,
        params={"timeout": str(timeout)},
        timeout_s=timeout + WAIT_MARGIN_S,
    )


def visualize_call(  # noqa: PLR0913 - one parameter per field of the request
    model: str,
    target: int | None,
    layer: str | None,
    channel: int | None,
    options: Mapping[str, Any],
    timeout: float | None,
) -> Call:
    body = {"target": target, "layer": layer, "channel": channel}
    body = {name: value for name, value in body.items() if value is not None} | dict(options)
    return Call(
        "POST",
        f"/v1/models/{_segment(model)}/visualizations",
        json=body,
        params={} if timeout is None else {"timeout": str(timeout)},
        timeout_s=None if timeout is None else timeout + WAIT_MARGIN_S,
    )


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{_segment(job_id)}"


def model_path(model: str) -> str:
    return f"/v1/models/{_segment(model)}"


def _segment(value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{value!r} is not an id")
    return value


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
    timeout = http.timeout if call.timeout_s is None else httpx.Timeout(call.timeout_s)
    return http.build_request(
        call.method,
        call.path,
        json=call.json,
        params=call.params or None,
        timeout=timeout,
    )


def retry_delay(
    retry: Retry, attempt: int, call: Call, outcome: httpx.Response | httpx.TransportError
) -> float | None:
    """Seconds to wait before trying `call` again after `outcome`, or None to give up."""
    if isinstance(outcome, httpx.Response):
        if outcome.status_code not in RETRY_STATUSES:
            return None
        delay = retry.delay(attempt, parse_retry_after(outcome.headers.get("retry-after")))
        what = str(outcome.status_code)
    else:
        # Only a connection that never opened is safe to retry: the request was not sent.
        if not isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout):
            return None
        delay = retry.delay(attempt, None)
        what = "no connection"
    if delay is not None:
        log.info(
            "%s on %s %s; retry %d/%d in %.2f s",
            what,
            call.method,
            call.path,
            attempt,
            retry.attempts,
            delay,
        )
    return delay


def transport_error(call: Call, error: httpx.TransportError) -> GlimpseError:
    """The error of a request that got no answer."""
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
        return Timeout(f"No answer to {call.method} {call.path} in time.", status=None)
    try:
        where = str(error.request.url.copy_with(query=None))
    except RuntimeError:
        where = call.path
    return Unreachable(f"{call.method} {where}: {type(error).__name__}: {error}", status=None)


def answer_json(response: httpx.Response) -> Any:
    """The JSON of a successful answer; the answer's problem raised as its error otherwise."""
    if response.is_success:
        try:
            return response.json()
        except ValueError:
            raise ServerError(
                f"The answer to {response.request.url.path} is not JSON.",
                status=response.status_code,
            ) from None
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": f"HTTP {response.status_code}"}
    raise problem_error(response.status_code, problem, retry_after)
