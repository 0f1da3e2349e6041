"""A stream entry the worker cannot parse: its job fails with a 422 problem, or, when the entry
names no job, the entry is acknowledged and deleted. Never left pending, never a queued job that
no one will run. And a job whose rendering fails after its batch was computed fails alone."""

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from schemas import keys, problems
from schemas.explain import OutputOptions
from schemas.jobs import ExplanationJob, JobRecord, JobState, VisualizationJob
from schemas.problems import Problem
from schemas.sealing import PayloadSealer
from schemas.visualizations import VisualizationParams
from workers import pipeline
from workers.config import WorkerSettings
from workers.demo.data import make_sample, to_png_bytes
from workers.dicom_objects import DerivedObjectError
from workers.repository import LoadedModel, load_model
from workers.worker import Worker

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"


@pytest.fixture(scope="module")
def demo_model() -> LoadedModel:
    return load_model(DEMO, torch.device("cpu"))


@pytest.fixture()
def worker(redis_url: str, demo_model: LoadedModel) -> Iterator[Worker]:
    """A worker serving the demo model under an id of its own, so no other worker reads its
    stream."""
    model_id = f"entries-{uuid.uuid4().hex[:8]}"
    manifest = demo_model.manifest.model_copy(update={"id": model_id})
    model = dataclasses.replace(demo_model, manifest=manifest)
    settings = WorkerSettings(redis_url=redis_url, block_ms=10)
    connection = redis.Redis.from_url(redis_url)
    sealer = PayloadSealer.from_key_file(settings.payload_key_file)
    serving = Worker(settings, {model_id: model}, connection, sealer)
    serving._register()  # the stream's consumer group
    yield serving
    connection.delete(keys.job_stream(model_id))
    connection.close()


def queue_record(worker: Worker, job_id: str, model_id: str) -> None:
    worker.store.redis.hset(
        keys.job_record(job_id),
        mapping={
            JobRecord.STATUS: JobState.QUEUED.value,
            JobRecord.OWNER: "tests",
            JobRecord.MODEL: model_id,
            JobRecord.CREATED_AT: repr(time.time()),
        },
    )


def add_entry(worker: Worker, model_id: str, fields: dict[str, bytes]) -> None:
    worker.store.redis.xadd(keys.job_stream(model_id), fields)  # type: ignore[arg-type]


def entry_ids(worker: Worker, model_id: str) -> list[str]:
    return [
        entry_id.decode()
        for entry_id, _ in worker.store.redis.xrange(keys.job_stream(model_id))  # type: ignore[union-attr]
    ]


def nothing_left(worker: Worker, model_id: str) -> None:
    stream = keys.job_stream(model_id)
    pending = worker.store.redis.xpending(stream, keys.CONSUMER_GROUP)
    assert pending["pending"] == 0
    assert worker.store.redis.xlen(stream) == 0


def failure_of(worker: Worker, job_id: str) -> Problem:
    record = worker.store.redis.hgetall(keys.job_record(job_id))
    assert record[JobRecord.STATUS.encode()].decode() == JobState.FAILED.value
    return Problem.model_validate_json(record[JobRecord.ERROR.encode()])


def visualization_entry(job_id: str, model_id: str, reply_to: str | None) -> dict[str, object]:
    """A visualization job as the gateway writes it, as JSON."""
    message = VisualizationJob(
        job_id=job_id,
        model=model_id,
        reply_to=reply_to,
        enqueued_at=time.time(),
        visualization=VisualizationParams(target=0, steps=2),
        cache_key=f"tests:{job_id}",
    )
    return json.loads(message.model_dump_json())


def test_an_unparsable_entry_fails_its_job_with_422_naming_the_field(worker: Worker) -> None:
    (model_id,) = worker.model_ids
    job_id, channel = uuid.uuid4().hex, f"tests:{uuid.uuid4().hex}"
    queue_record(worker, job_id, model_id)
    entry = visualization_entry(job_id, model_id, channel)
    # How a JSON writer spells a weight of Infinity: the worker's schema refuses it.
    entry["visualization"]["tv"] = None  # type: ignore[index]
    entry["visualization"]["rotate"] = "SECRET-VALUE"  # type: ignore[index]
    subscriber = worker.store.redis.pubsub()
    subscriber.subscribe(channel)
    assert subscriber.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    add_entry(worker, model_id, {"job": json.dumps(entry).encode()})

    assert worker._next_batch() == []

    problem = failure_of(worker, job_id)
    kind = problems.INVALID_REQUEST
    assert (problem.type, problem.status, problem.title) == (kind.type, 422, kind.title)
    assert problem.job_id == job_id
    assert problem.detail is not None
    assert "visualization.tv" in problem.detail and "visualization.rotate" in problem.detail
    assert "SECRET-VALUE" not in problem.detail
    announced = subscriber.get_message(timeout=2)
    assert announced is not None and announced["data"] == job_id.encode()
    subscriber.close()
    nothing_left(worker, model_id)


@pytest.mark.parametrize(
    "job",
    [
        {"job_id": "<id>", "kind": "nonsense"},
        {"job_id": "<id>"},
        {"job_id": "<id>", "kind": "explanation", "model": 3},
    ],
)
def test_any_unparsable_message_with_a_job_id_fails_that_job(
    worker: Worker, job: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    (model_id,) = worker.model_ids
    job_id = uuid.uuid4().hex
    queue_record(worker, job_id, model_id)
    add_entry(worker, model_id, {"job": json.dumps({**job, "job_id": job_id}).encode()})
    (entry_id,) = entry_ids(worker, model_id)

    assert worker._next_batch() == []

    problem = failure_of(worker, job_id)
    assert problem.status == 422
    assert "nonsense" not in (problem.detail or "")
    nothing_left(worker, model_id)
    (logged,) = [r.getMessage() for r in caplog.records if entry_id in r.getMessage()]
    assert job_id in logged


@pytest.mark.parametrize(
    "fields",
    [
        {"job": b"\xff\xfe not JSON at all"},
        {"job": b'{"kind": "visualization"}'},
        {"job": b'["job_id", "x"]'},
        {"job": b'{"job_id": 42}'},
        {"something": b"else"},
    ],
)
def test_an_entry_naming_no_job_is_acknowledged_and_deleted(
    worker: Worker, fields: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    (model_id,) = worker.model_ids
    add_entry(worker, model_id, fields)
    (entry_id,) = entry_ids(worker, model_id)

    assert worker._next_batch() == []

    nothing_left(worker, model_id)
    assert any(entry_id in record.getMessage() for record in caplog.records)


def test_a_good_entry_beside_a_bad_one_is_still_served(worker: Worker) -> None:
    (model_id,) = worker.model_ids
    job_id = uuid.uuid4().hex
    queue_record(worker, job_id, model_id)
    add_entry(worker, model_id, {"job": b"garbage"})
    good = visualization_entry(job_id, model_id, None)
    add_entry(worker, model_id, {"job": json.dumps(good).encode()})

    (entry,) = worker._next_batch()

    assert entry.message.job_id == job_id


def explanation_entry(worker: Worker, model_id: str, seed: int) -> str:
    """A queued explanation job of a demo image, its image sealed in Redis as the gateway
    stores it; its id."""
    job_id = uuid.uuid4().hex
    queue_record(worker, job_id, model_id)
    image_key = keys.job_image(job_id)
    data = to_png_bytes(make_sample(seed).image)
    worker.store.redis.set(image_key, worker.store.sealer.seal(data, image_key), ex=60)
    message = ExplanationJob(
        job_id=job_id,
        model=model_id,
        enqueued_at=time.time(),
        methods=["gradcam"],
        target="top1",
        params={},
        output=OutputOptions(overlay=False, size="model"),
    )
    add_entry(worker, model_id, {"job": message.model_dump_json().encode()})
    return job_id


def test_a_job_whose_rendering_fails_fails_alone_and_its_batch_mate_is_stored(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    (model_id,) = worker.model_ids
    good, bad = explanation_entry(worker, model_id, 1), explanation_entry(worker, model_id, 2)
    render = pipeline.render_explanations

    def render_all_but_bad(*args: Any) -> pipeline.RenderedJob:
        _, job, _ = args
        if job.message.job_id == bad:  # as a source header highdicom cannot derive from
            raise DerivedObjectError("the derived DICOM objects could not be built")
        return render(*args)

    monkeypatch.setattr(pipeline, "render_explanations", render_all_but_bad)
    entries = worker._next_batch()
    assert len(entries) == 2

    worker.process(entries)  # one group: the two jobs share every pass
    worker.finisher.close()

    assert failure_of(worker, bad).status == 500
    record = worker.store.redis.hgetall(keys.job_record(good))
    assert record[JobRecord.STATUS.encode()].decode() == JobState.SUCCEEDED.value
    nothing_left(worker, model_id)
