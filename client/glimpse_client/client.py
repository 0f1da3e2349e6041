"""`Client` (blocking) and `AsyncClient` (asyncio): the Glimpse API as typed Python calls."""

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from glimpse_client import calls
from glimpse_client.calls import Call, Target
from glimpse_client.errors import JobFailed, Timeout, problem_error
from glimpse_client.images import ExplainInput
from glimpse_client.results import (
    ExplainResult,
    Job,
    JobAccepted,
    MethodInfo,
    ModelInfo,
    Visualization,
)
from glimpse_client.retry import Retry

FIRST_POLL_S = 0.1
MAX_POLL_S = 2.0


def _finished(job: Job) -> Job:
    if job.status == "failed":
        error = job.error or {}
        status = error.get("status")
        cause = problem_error(status if isinstance(status, int) else 500, error)
        raise JobFailed(job.job_id, cause)
    return job


def _wait_timeout(job_id: str, timeout: float) -> Timeout:
    return Timeout(
        f"Job {job_id} did not finish in {timeout:g} s; it may still.", status=None, job_id=job_id
    )


class Client:
    """The Glimpse API, blocking.

    `url` defaults to `$GLIMPSE_URL` (else http://127.0.0.1:8000), `api_key` to
    `$GLIMPSE_API_KEY`; the key is sent as `Authorization: Bearer`. `timeout` bounds each HTTP
    exchange (an explain with its own `timeout` waits that long plus a margin). 429 and 503
    answers are retried as `retry` says. Every error of the service is raised as the
    `GlimpseError` subclass of its problem type. Use it as a context manager, or `close()` it.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = calls.DEFAULT_TIMEOUT_S,
        retry: Retry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = calls.base_url(url)
        self.retry = retry or Retry()
        self._http = httpx.Client(
            base_url=self.url,
            headers=calls.headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def explain(  # noqa: PLR0913 - one parameter per field of the request
        self,
        image: ExplainInput,
        model: str,
        methods: str | Sequence[str] = "gradcam",
        *,
        target: Target = "top1",
        params: Mapping[str, Mapping[str, Any]] | None = None,
        output: Mapping[str, Any] | None = None,
        dicom: Mapping[str, Any] | None = None,
        evaluate: bool = False,
        store: str | None = None,
        timeout: float | None = None,
    ) -> ExplainResult:
        """Explain one image and wait for its maps (`timeout`: the service's wait, seconds).

        `image` is a path, file bytes (PNG, JPEG, DICOM), a PIL image or a numpy array, or a
        `DicomwebInstance` for the service to fetch from a DICOMweb server it knows. `params`
        maps a method to its parameters, `output` and `dicom` are the request's objects of the
        same names. `evaluate` asks for each map's deletion and insertion AUC and top-10 % drop
        (`Explanation.evaluation`), at 22 forward passes a map. `store` names a DICOMweb server
        to send the derived DICOM objects (`output["dicom"]`) to by STOW-RS; the result's
        `stored` lists them. A 504 raises `Timeout` with the `job_id` to `wait` for.
        """
        body = calls.explain_body(
            image, model, methods, target, params, output, dicom, evaluate, store
        )
        return ExplainResult.from_json(self._send(calls.explain_call(body, timeout)))

    def submit(  # noqa: PLR0913 - one parameter per field of the request
        self,
        image: ExplainInput,
        model: str,
        methods: str | Sequence[str] = "gradcam",
        *,
        target: Target = "top1",
        params: Mapping[str, Mapping[str, Any]] | None = None,
        output: Mapping[str, Any] | None = None,
        dicom: Mapping[str, Any] | None = None,
        evaluate: bool = False,
        store: str | None = None,
    ) -> JobAccepted:
        """Queue an explanation (`POST /v1/jobs`) and return at once; `wait` for its result."""
        body = calls.explain_body(
            image, model, methods, target, params, output, dicom, evaluate, store
        )
        return JobAccepted.model_validate(self._send(Call("POST", "/v1/jobs", json=body)))

    def job(self, job_id: str) -> Job:
        """The job's state now, with its result once it succeeded."""
        return Job.from_json(self._send(Call("GET", calls.job_path(job_id))))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job; a running or finished one comes back unchanged."""
        return Job.from_json(self._send(Call("DELETE", calls.job_path(job_id))))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Poll the job, less often as it runs on, until it has finished (or been cancelled).

        Raises `JobFailed` for a failed job and `Timeout` (with the `job_id`) after `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = FIRST_POLL_S
        while True:
            job = self.job(job_id)
            if job.status.finished:
                return _finished(job)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _wait_timeout(job_id, timeout or 0)
                delay = min(delay, remaining)
            time.sleep(delay)
            delay = min(delay * 1.5, MAX_POLL_S)

    def models(self) -> list[ModelInfo]:
        return [ModelInfo.model_validate(m) for m in self._send(Call("GET", "/v1/models"))]

    def model(self, model: str) -> ModelInfo:
        return ModelInfo.model_validate(self._send(Call("GET", calls.model_path(model))))

    def methods(self) -> list[MethodInfo]:
        return [MethodInfo.model_validate(m) for m in self._send(Call("GET", "/v1/methods"))]

    def visualize(
        self,
        model: str,
        target: int | None = None,
        *,
        layer: str | None = None,
        channel: int | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Visualization:
        """Activation maximisation: the input that raises class `target` (or `layer`'s
        `channel`). `options` are the request's other fields: steps, size, seed, lr, …"""
        call = calls.visualize_call(model, target, layer, channel, options, timeout)
        return Visualization.from_json(self._send(call))

    def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.send(calls.build_request(self._http, call))
            except httpx.TransportError as error:
                delay = calls.retry_delay(self.retry, attempt, call, error)
                if delay is None:
                    raise calls.transport_error(call, error) from error
            else:
                delay = calls.retry_delay(self.retry, attempt, call, response)
                if delay is None:
                    return calls.answer_json(response)
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The Glimpse API for asyncio: the same calls as `Client`, awaited.

    One `AsyncClient` serves many concurrent calls; `async with` it, or `await aclose()`.
    """

    def __init__(  # noqa: PLR0913 - keyword-only connection settings
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = calls.DEFAULT_TIMEOUT_S,
        retry: Retry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self.url = calls.base_url(url)
        self.retry = retry or Retry()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=calls.headers(api_key),
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def explain(  # noqa: PLR0913 - one parameter per field of the request
        self,
        image: ExplainInput,
        model: str,
        methods: str | Sequence[str] = "gradcam",
        *,
        target: Target = "top1",
        params: Mapping[str, Mapping[str, Any]] | None = None,
        output: Mapping[str, Any] | None = None,
        dicom: Mapping[str, Any] | None = None,
        evaluate: bool = False,
        store: str | None = None,
        timeout: float | None = None,
    ) -> ExplainResult:
        """As `Client.explain`."""
        body = calls.explain_body(
            image, model, methods, target, params, output, dicom, evaluate, store
        )
        return ExplainResult.from_json(await self._send(calls.explain_call(body, timeout)))

    async def submit(  # noqa: PLR0913 - one parameter per field of the request
        self,
        image: ExplainInput,
        model: str,
        methods: str | Sequence[str] = "gradcam",
        *,
        target: Target = "top1",
        params: Mapping[str, Mapping[str, Any]] | None = None,
        output: Mapping[str, Any] | None = None,
        dicom: Mapping[str, Any] | None = None,
        evaluate: bool = False,
        store: str | None = None,
    ) -> JobAccepted:
        """As `Client.submit`."""
        body = calls.explain_body(
            image, model, methods, target, params, output, dicom, evaluate, store
        )
        return JobAccepted.model_validate(await self._send(Call("POST", "/v1/jobs", json=body)))

    async def job(self, job_id: str) -> Job:
        return Job.from_json(await self._send(Call("GET", calls.job_path(job_id))))

    async def cancel(self, job_id: str) -> Job:
        return Job.from_json(await self._send(Call("DELETE", calls.job_path(job_id))))

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """As `Client.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = FIRST_POLL_S
        while True:
            job = await self.job(job_id)
            if job.status.finished:
                return _finished(job)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _wait_timeout(job_id, timeout or 0)
                delay = min(delay, remaining)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, MAX_POLL_S)

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo.model_validate(m) for m in await self._send(Call("GET", "/v1/models"))]

    async def model(self, model: str) -> ModelInfo:
        return ModelInfo.model_validate(await self._send(Call("GET", calls.model_path(model))))

    async def methods(self) -> list[MethodInfo]:
        return [MethodInfo.model_validate(m) for m in await self._send(Call("GET", "/v1/methods"))]

    async def visualize(
        self,
        model: str,
        target: int | None = None,
        *,
        layer: str | None = None,
        channel: int | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Visualization:
        """As `Client.visualize`."""
        call = calls.visualize_call(model, target, layer, channel, options, timeout)
        return Visualization.from_json(await self._send(call))

    async def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.send(calls.build_request(self._http, call))
            except httpx.TransportError as error:
                delay = calls.retry_delay(self.retry, attempt, call, error)
                if delay is None:
                    raise calls.transport_error(call, error) from error
            else:
                delay = calls.retry_delay(self.retry, attempt, call, response)
                if delay is None:
                    return calls.answer_json(response)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
