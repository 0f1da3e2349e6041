"""The worker loop: read a micro-batch, group compatible jobs, explain, store, acknowledge."""

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from redis import Redis
from redis.exceptions import RedisError

from schemas import metrics, problems
from schemas.dicomweb import load_dicomweb_servers
from schemas.explain import ExplainResponse
from schemas.jobs import JOB_MESSAGE, ExplanationJob, JobState, VisualizationJob
from schemas.logs import LogFields, log_fields
from schemas.models import FailedModel
from schemas.problems import PROBLEM_TYPE_PREFIX, Problem, ProblemKind
from schemas.sealing import PayloadSealer, SealedPayloadError
from schemas.visualizations import ACTIVATION_MAX, VisualizationResponse
from workers.config import WorkerSettings
from workers.deadline import DeadlineExceeded, deadline
from workers.decoded import DecodedImage, ImageError
from workers.dicom_objects import with_source_header
from workers.dicomweb import (
    DicomwebError,
    DicomwebServerCall,
    check_grid_fits,
    stored_response,
)
from workers.finishing import Finisher
from workers.groups import BatchGroups, Entry, JobGroup, JobT
from workers.images import decode_image
from workers.methods import MethodParameterError, TargetError, available_methods
from workers.methods.base import UnsupportedModelError
from workers.pipeline import PreparedJob, compute_maps, respond_each
from workers.precision import computing, prepare
from workers.repository import LoadedModel, ModelLoadError
from workers.store import JobStore, StreamJob
from workers.visualization_jobs import visualization_responses

log = logging.getLogger("glimpse.worker")
# A consumer that holds no entries and has not read for this many visibility timeouts belongs to
# a worker that is gone: live workers remove it from the group.
CONSUMER_IDLE_FACTOR = 10

# How many of an unparsable entry's errors its job's problem names.
MAX_LISTED_ERRORS = 20


Result = ExplainResponse | VisualizationResponse
Deferred = Callable[[], Sequence[Result | Exception]]
"""A group's results still to render: computed, then finished off the compute path; a job
whose rendering raised has its exception in its place."""
STORE_RETRY_S = 0.5
"""Wait between attempts to store a computed batch while Redis is unavailable."""


class JobFailed(Exception):
    """A job that cannot succeed; carries the problem its client will read."""

    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.problem = kind.problem(detail)


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        models: dict[str, LoadedModel],
        redis: Redis,
        sealer: PayloadSealer,
        failures: Sequence[ModelLoadError] = (),
    ) -> None:
        self.settings = settings
        self.models = models
        self.failures = list(failures)
        self.dicomweb = load_dicomweb_servers(settings.dicomweb_servers)
        self.store = JobStore(redis, settings.worker_id, settings.result_ttl_s, sealer)
        self.stopping = threading.Event()
        self.infos = [
            model.info([*available_methods(model.module), ACTIVATION_MAX])
            for model in models.values()
        ]
        self._last_claim = 0.0
        # The entries of the batch in hand, whose leases the lease thread keeps.
        self._in_hand: list[tuple[str, str]] = []
        self._in_hand_lock = threading.Lock()
        # Rendering, encoding and storing of computed batches, beside the compute loop.
        self.finisher = Finisher()
        prepare(models, settings.max_batch_memory)

    @property
    def model_ids(self) -> list[str]:
        return sorted(self.models)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; the batch in hand is finished and acknowledged first."""
        self._register()
        heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        heartbeat.start()
        leases = threading.Thread(target=self._keep_leases, name="leases", daemon=True)
        leases.start()
        log.info("worker %s serving %s", self.settings.worker_id, ", ".join(self.model_ids))
        try:
            while not self.stopping.is_set():
                try:
                    entries = self._next_batch()
                except RedisError as exc:
                    log.warning("Redis unavailable (%s); retrying", type(exc).__name__)
                    self.stopping.wait(1.0)
                    continue
                if entries:
                    self._process_safely(entries)
        finally:
            self.finisher.close()  # every computed batch stored and acknowledged first
            self.stopping.set()
            heartbeat.join(timeout=5)
            leases.join(timeout=5)
            try:
                self.store.sign_off(self.model_ids)
            except RedisError:
                log.warning("could not sign off from Redis")
            log.info("worker %s stopped", self.settings.worker_id)

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _: object) -> None:
            log.info("signal %d: finishing the batch in hand", signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _beat(self) -> None:
        description = json.dumps({"models": self.model_ids, "device": self._device_names()})
        while not self.stopping.is_set():
            try:
                self.store.heartbeat(self.model_ids, description)
                self._register()
            except RedisError:
                log.warning("heartbeat failed; Redis unavailable")
            self.stopping.wait(self.settings.heartbeat_s)

    def _keep_leases(self) -> None:
        """Every third of the visibility timeout, reset the idle time of the entries in hand:
        only the entries of a worker that stopped extending them, a dead one, are taken over."""
        period = self.settings.visibility_timeout_s / 3
        while not self.stopping.wait(period):
            with self._in_hand_lock:
                in_hand = [*self._in_hand, *self.finisher.pending()]
            if not in_hand:
                continue
            try:
                self.store.extend_leases(in_hand)
            except RedisError:
                log.warning("could not extend the leases of the batch in hand; Redis unavailable")

    def _register(self) -> None:
        """Publish the models served and, stamped now, the folders that failed to load."""
        now = time.time()
        failed = [
            FailedModel(
                id=failure.model_id,
                version=failure.version,
                reason=failure.problem,
                reported_at=now,
            )
            for failure in self.failures
        ]
        self.store.register_models(self.infos, failed)

    def _device_names(self) -> list[str]:
        return sorted({str(model.device) for model in self.models.values()})

    def _next_batch(self) -> list[Entry]:
        """Up to max_batch entries: stale ones first, then new ones, waiting briefly to fill."""
        raw = []
        now = time.monotonic()
        if now - self._last_claim > self.settings.visibility_timeout_s / 2:
            self._last_claim = now
            raw = self.store.claim_stale(
                self.model_ids,
                int(self.settings.visibility_timeout_s * 1000),
                self.settings.max_batch,
            )
            self.store.forget_idle_consumers(
                self.model_ids,
                int(self.settings.visibility_timeout_s * 1000 * CONSUMER_IDLE_FACTOR),
            )
        if not raw:
            raw = self.store.read(self.model_ids, self.settings.max_batch, self.settings.block_ms)
        # Redis times blocked reads out at its own tick (tens of ms), far coarser than a batching
        # window, so the window is filled by non-blocking reads instead.
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while raw and len(raw) < self.settings.max_batch and time.monotonic() < deadline:
            more = self.store.read(self.model_ids, self.settings.max_batch - len(raw), None)
            if more:
                raw.extend(more)
            else:
                time.sleep(0.001)
        return self._readable_entries(raw)

    def _readable_entries(self, raw: list[tuple[str, str, dict[bytes, bytes]]]) -> list[Entry]:
        """The entries whose job parses; the others are refused under their entry ids."""
        entries = []
        for model_id, entry_id, fields in raw:
            job = fields.get(b"job", b"")
            try:
                message = JOB_MESSAGE.validate_json(job)
            except ValidationError as exc:
                self._refuse_unreadable(model_id, entry_id, job, exc)
                continue
            entries.append(Entry(model_id, entry_id, message))
        return entries

    def _refuse_unreadable(
        self, model_id: str, entry_id: str, job: bytes, exc: ValidationError
    ) -> None:
        """Fail the job of an entry that does not parse, naming what did not; an entry without
        a readable job id is only acknowledged and deleted."""
        header = _readable_header(job)
        if header is None:
            log.error("deleting entry %s on %s: it names no job", entry_id, model_id)
            self.store.drop(model_id, entry_id)
            return
        job_id, reply_to = header
        log.error("job %s failed: its entry %s on %s does not parse", job_id, entry_id, model_id)
        errors = "; ".join(
            _error_text(error)
            for error in exc.errors(include_url=False, include_input=False)[:MAX_LISTED_ERRORS]
        )
        problem = problems.INVALID_REQUEST.problem(f"The queued job does not parse: {errors}")
        problem.job_id = job_id
        self._count_failure(problem)
        self.store.complete(
            StreamJob(model_id, entry_id, job_id, reply_to),
            error_json=problem.model_dump_json(exclude_none=True),
        )

    def _process_safely(self, entries: list[Entry]) -> None:
        """A batch never ends the worker: unacknowledged entries are taken over later."""
        with self._in_hand_lock:
            self._in_hand = [(entry.model_id, entry.entry_id) for entry in entries]
        try:
            self.process(entries)
        except RedisError as exc:
            log.warning("Redis failed mid-batch (%s); its jobs will be retried", type(exc).__name__)
        except Exception:
            log.exception("a batch failed unexpectedly; its jobs will be retried")
        finally:
            with self._in_hand_lock:
                self._in_hand = []

    def process(self, entries: list[Entry]) -> None:
        """Claim the entries, prepare and group them, then compute each group."""
        groups = self._group(entries)
        for explanations in groups.explanations.values():
            self._run_group(explanations, self._explain)
        for visualizations in groups.visualizations.values():
            self._run_group(visualizations, self._visualize)

    def _group(self, entries: list[Entry]) -> BatchGroups:
        """The entries' jobs still to run, claimed, decoded and grouped; a job that cannot run
        is failed here and a cancelled or finished one acknowledged."""
        groups = BatchGroups()
        for entry in entries:
            job_id = entry.message.job_id
            deliveries = self.store.claim(job_id)
            if deliveries < 0:
                self.store.discard(entry.model_id, entry.entry_id, job_id)
                continue
            try:
                if deliveries > self.settings.max_deliveries:
                    raise JobFailed(
                        problems.TOO_MANY_DELIVERIES,
                        f"Delivered {deliveries} times without finishing; giving up.",
                    )
                message = entry.message
                if isinstance(message, VisualizationJob):
                    groups.add_visualization(entry, message)
                else:
                    prepared = PreparedJob(message, self._decode(message), time.time())
                    groups.add_explanation(entry, prepared)
            except JobFailed as failure:
                self._fail(entry, failure.problem)
        return groups

    def _explain(self, model: LoadedModel, jobs: list[PreparedJob]) -> Deferred:
        with computing(model.device, self.settings.precision):
            computed = compute_maps(model, jobs, self.settings.max_batch)
        return lambda: respond_each(model, jobs, computed)

    def _visualize(
        self, model: LoadedModel, jobs: list[VisualizationJob]
    ) -> list[VisualizationResponse]:
        return visualization_responses(model, jobs)

    def _decode(self, message: ExplanationJob) -> DecodedImage:
        data = self._stored_image(message) if message.source is None else self._fetched(message)
        model = self.models.get(message.model)
        # Decoded no larger than the model needs, as far as whole-factor reduction allows.
        reduce_to = (
            None if model is None else (model.manifest.input.height, model.manifest.input.width)
        )
        try:
            decoded = decode_image(
                data,
                self.settings.max_image_pixels,
                message.dicom,
                reduce_to=reduce_to,
                model_input=None if model is None else model.manifest.input,
            )
            return with_source_header(decoded, data) if message.output.dicom else decoded
        except ImageError as exc:
            raise JobFailed(exc.kind, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile files
            raise JobFailed(problems.BAD_IMAGE, "The image is corrupt.") from exc

    def _stored_image(self, message: ExplanationJob) -> bytes:
        try:
            data = self.store.image(message.job_id)
        except SealedPayloadError as exc:
            raise JobFailed(
                problems.INTERNAL, "The job's image does not open with this worker's payload key."
            ) from exc
        if data is None:
            raise JobFailed(problems.IMAGE_EXPIRED, "The job's image has expired.")
        return data

    def _fetched(self, message: ExplanationJob) -> bytes:
        """The job's `source` instance, fetched by WADO-RS (kept in memory only)."""
        assert message.source is not None
        spec = self.models[message.model].manifest.input  # its stream is this worker's
        try:
            server = DicomwebServerCall(self.dicomweb, message.source.dicomweb)
            data = server.fetch(message.source, self.settings.max_image_pixels)
            check_grid_fits(message.output, data, (spec.height, spec.width))
        except (DicomwebError, ImageError) as exc:
            raise JobFailed(exc.kind, str(exc)) from exc
        return data

    def _run_group(
        self,
        group: JobGroup[JobT],
        compute: Callable[[LoadedModel, list[JobT]], Sequence[Result] | Deferred],
    ) -> None:
        """Compute a group and store each result (a deferred one after it is rendered, beside
        the compute loop); on failure retry it in halves, so that one
        bad job, or a batch too big for the device's memory, fails no other job."""
        model = self.models[group.model_id]
        budget_s = self.settings.max_job_seconds * len(group.members)
        try:
            with deadline(budget_s):
                results = compute(model, [member.job for member in group.members])
        except DeadlineExceeded:
            # Not split: its halves would each take about as long per job again.
            log.warning(
                "a group of %d jobs ran past its %.0f s budget", len(group.members), budget_s
            )
            for member in group.members:
                self._fail(member.entry, self._too_long())
            return
        except Exception as exc:
            self._split_or_fail(group, compute, exc)
            return
        if callable(results):
            self._finish_later(group, results)
            return
        self._store_results(group, results)
        self._record(group, results)

    def _finish_later(self, group: JobGroup[JobT], finish: Deferred) -> None:
        """Render, store and acknowledge the group's results on the finishing pool; a job whose
        rendering raised fails alone, with the others stored (a Redis error leaves them to be
        redelivered)."""

        def work() -> None:
            try:
                outcomes = finish()
            except Exception:
                log.exception("rendering a batch of %d jobs failed", len(group.members))
                for member in group.members:
                    self._fail(member.entry, _problem_for(RuntimeError("rendering failed")))
                return
            rendered: JobGroup[JobT] = JobGroup(group.model_id)
            results: list[Result] = []
            for member, outcome in zip(group.members, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    entry = member.entry
                    log.error(
                        "rendering job %s failed",
                        entry.message.job_id,
                        exc_info=outcome,
                        extra=log_fields(**_job_fields(entry)),
                    )
                    self._fail(entry, _problem_for(outcome))
                else:
                    rendered.members.append(member)
                    results.append(outcome)
            self._store_with_retries(rendered, results)
            self._record(rendered, results)

        entries = [(member.entry.model_id, member.entry.entry_id) for member in group.members]
        self.finisher.submit(entries, work)

    def _store_with_retries(self, group: JobGroup[JobT], results: Sequence[Result]) -> None:
        """Store the results, asking again while Redis is briefly unavailable (storing a result
        twice stores it once), for up to a third of the visibility timeout: a computed batch
        is not computed again for a blip. A longer outage leaves its jobs to redelivery."""
        give_up = time.monotonic() + self.settings.visibility_timeout_s / 3
        while True:
            try:
                self._store_results(group, results)
                return
            except RedisError:
                if time.monotonic() >= give_up or self.stopping.wait(STORE_RETRY_S):
                    raise
                log.warning("Redis unavailable while storing a batch; asking again")

    def _split_or_fail(
        self,
        group: JobGroup[JobT],
        compute: Callable[[LoadedModel, list[JobT]], Sequence[Result] | Deferred],
        exc: Exception,
    ) -> None:
        """Retry a group that raised in halves; fail a single job with the problem it raised."""
        if len(group.members) > 1:
            self.store.count("batches_split")
            for half in group.halves():
                self._run_group(half, compute)
            return
        entry = group.members[0].entry
        if not isinstance(exc, MethodParameterError | TargetError | UnsupportedModelError):
            log.exception(
                "job %s failed", entry.message.job_id, extra=log_fields(**_job_fields(entry))
            )
        self._fail(entry, _problem_for(exc))

    def _too_long(self) -> Problem:
        return problems.JOB_TOO_LONG.problem(
            f"The job ran past the worker's budget of "
            f"{self.settings.max_job_seconds:g} s per job and was stopped; "
            "ask for fewer methods, targets, samples, steps or masks."
        )

    def _store_results(self, group: JobGroup[JobT], results: Sequence[Result]) -> None:
        for member, computed in zip(group.members, results, strict=True):
            entry = member.entry
            try:
                result = self._sent_to_store(entry.message, computed)
            except JobFailed as failure:
                self._fail(entry, failure.problem)
                continue
            result_json = result.model_dump_json()
            # Cached first: the client woken by `complete` may repeat its request at once.
            if entry.message.cache_key is not None:
                self.store.cache(entry.message.cache_key, result_json)
            stored = self.store.complete(entry.stream_job(), result_json=result_json)
            self.store.count("results_stored" if stored else "duplicates_dropped")
            _log_finished(entry, JobState.SUCCEEDED if stored else "duplicate", result=result)

    def _sent_to_store(self, message: ExplanationJob | VisualizationJob, result: Result) -> Result:
        """The result of a `store` job, once its derived objects are stored, listing them."""
        if not isinstance(message, ExplanationJob) or message.store is None:
            return result
        assert isinstance(result, ExplainResponse)
        try:
            return stored_response(self.dicomweb, message.store, result)
        except DicomwebError as exc:
            raise JobFailed(exc.kind, str(exc)) from exc

    def _record(self, group: JobGroup[JobT], results: Sequence[Result]) -> None:
        """The batch's size, each job's time in the service and each map's compute time."""
        finished = time.time()
        observations = [(metrics.BATCH_SIZE, group.model_id, float(len(group.members)))]
        for member, result in zip(group.members, results, strict=True):
            waited = max(0.0, finished - member.entry.message.enqueued_at)
            observations.append((metrics.JOB_SECONDS, group.model_id, waited))
            if isinstance(result, ExplainResponse):
                observations.extend(
                    (metrics.MAP_SECONDS, explanation.method, explanation.compute_ms / 1000)
                    for explanation in result.explanations
                )
        try:
            self.store.record(observations)
        except RedisError:
            log.warning("could not record the batch's metrics", exc_info=True)

    def _fail(self, entry: Entry, problem: Problem) -> None:
        problem.job_id = entry.message.job_id
        self._count_failure(problem)
        self.store.complete(
            entry.stream_job(), error_json=problem.model_dump_json(exclude_none=True)
        )
        _log_finished(entry, JobState.FAILED, problem=problem)

    def _count_failure(self, problem: Problem) -> None:
        self.store.count("jobs_failed")
        kind = problem.type.removeprefix(PROBLEM_TYPE_PREFIX)
        try:
            self.store.record([], [(metrics.JOBS_FAILED, kind)])
        except RedisError:
            log.warning("could not record the failure's metrics", exc_info=True)


def _job_fields(entry: Entry) -> LogFields:
    """What a job's log lines name: the job, its request, its model and its methods."""
    message = entry.message
    methods = message.methods if isinstance(message, ExplanationJob) else [ACTIVATION_MAX]
    fields = LogFields(job_id=message.job_id, model=entry.model_id, methods=methods)
    if message.request_id is not None:
        fields["request_id"] = message.request_id
    return fields


def _log_finished(
    entry: Entry, status: str, result: Result | None = None, problem: Problem | None = None
) -> None:
    """One line per finished job: how it ended, its timings or its kind of problem (never the
    problem's text, which may quote the request)."""
    fields = _job_fields(entry)
    fields["status"] = status
    outcome = ""
    if isinstance(result, ExplainResponse):
        fields["timings"] = result.timings.model_dump(exclude={"request_id"})
        outcome = f" in {result.timings.total_ms:.0f} ms"
    elif isinstance(result, VisualizationResponse):
        fields["timings"] = {"compute_ms": result.compute_ms}
        outcome = f" in {result.compute_ms:.0f} ms"
    if problem is not None:
        fields["problem"] = problem.type.removeprefix(PROBLEM_TYPE_PREFIX)
        outcome = f": {fields['problem']}"
    log.info(
        "job %s %s on %s (%s)%s",
        entry.message.job_id,
        status,
        entry.model_id,
        ", ".join(fields["methods"]),
        outcome,
        extra=log_fields(**fields),
    )


def _error_text(error: ErrorDetails) -> str:
    """Where a message failed to parse and why, without the value found there."""
    where = ".".join(str(part) for part in error["loc"]) or "job"
    message = error["msg"]
    tag = error.get("ctx", {}).get("tag")
    if isinstance(tag, str):  # the one message that quotes its input
        message = message.replace(repr(tag), "…")
    return f"{where}: {message}"


def _readable_header(job: bytes) -> tuple[str, str | None] | None:
    """The job id and reply channel of an entry's JSON, when it has a job id at all."""
    try:
        message = json.loads(job)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    job_id, reply_to = message.get("job_id"), message.get("reply_to")
    if not isinstance(job_id, str) or not job_id:
        return None
    return job_id, reply_to if isinstance(reply_to, str) else None


def _problem_for(exc: Exception) -> Problem:
    """What the client reads about a job that raised: its own mistake (422) or ours (500)."""
    if isinstance(exc, MethodParameterError | TargetError | UnsupportedModelError):
        return problems.INVALID_REQUEST.problem(str(exc))
    return problems.ATTRIBUTION_FAILED.problem(
        "The worker could not compute this job; the error is in its log."
    )
