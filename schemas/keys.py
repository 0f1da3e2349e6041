"""Every Redis key, stream and channel name that the gateway and the workers share."""

PREFIX = "glimpse"

CONSUMER_GROUP = "workers"
MODEL_REGISTRY = f"{PREFIX}:models"
MODEL_FAILURES = f"{PREFIX}:models:failed"
"""Hash of model id → `schemas.models.FailedModel`: the folders workers could not load."""
LIVE_WORKERS = f"{PREFIX}:workers:alive"
STATS = f"{PREFIX}:stats"
METRICS = f"{PREFIX}:metrics"
"""Histograms and counters of the whole service, in the field layout of `schemas.metrics`."""


def job_stream(model_id: str) -> str:
    """The stream of queued jobs for one model."""
    return f"{PREFIX}:stream:{model_id}"


def job_record(job_id: str) -> str:
    """Hash holding a job's status, owner, and (once done) its result or error."""
    return f"{PREFIX}:job:{job_id}"


def job_image(job_id: str) -> str:
    """The raw image bytes of a job; they travel here, not in the stream."""
    return f"{PREFIX}:image:{job_id}"


def gateway_channel(gateway_id: str) -> str:
    """Pub/sub channel on which a gateway hears that its jobs have finished."""
    return f"{PREFIX}:done:{gateway_id}"


def model_workers(model_id: str) -> str:
    """Sorted set of the workers serving a model, scored by their last heartbeat."""
    return f"{PREFIX}:model-workers:{model_id}"


def worker_info(worker_id: str) -> str:
    """A worker's self-description (models, device), refreshed with its heartbeat."""
    return f"{PREFIX}:worker:{worker_id}"


def rate_window(principal: str) -> str:
    """Sorted set of one caller's recent request times, for its rate limit."""
    return f"{PREFIX}:rate:{principal}"


def active_jobs(principal: str) -> str:
    """Sorted set of one caller's jobs that may still be queued or running, by admission time,
    for its concurrency limit."""
    return f"{PREFIX}:active:{principal}"


def explanation_cache(model_sha256: str, request_digest: str) -> str:
    """An explanation kept for identical requests: same key, image bytes, model weights, methods,
    parameters, target, output and DICOM options (`request_digest` covers all but the weights)."""
    return f"{PREFIX}:cache:explanation:{model_sha256}:{request_digest}"


def visualization_cache(model_sha256: str, params_digest: str) -> str:
    """A finished visualization of exact model weights with exact parameters."""
    return f"{PREFIX}:visualization:{model_sha256}:{params_digest}"


def idempotency(principal_digest: str, key_digest: str) -> str:
    """Hash of what one caller's `Idempotency-Key` admitted: the request's digest and its jobs
    (both parts are SHA-256 digests, so that neither a key's name nor the token is stored)."""
    return f"{PREFIX}:idempotency:{principal_digest}:{key_digest}"
