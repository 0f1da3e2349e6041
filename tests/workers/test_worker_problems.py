"""Every problem a worker can report carries the kind the gateway answers with: same type,
status and title, whichever side refused."""

import io
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from dicom_files import dicom_file  # type: ignore[import-not-found]
from PIL import Image

from schemas import keys, problems
from schemas.dicom import DicomOptions
from schemas.explain import OutputOptions
from schemas.jobs import ExplanationJob
from schemas.problems import PROBLEM_KINDS, Problem
from schemas.sealing import PayloadSealer
from service import errors
from workers.config import WorkerSettings
from workers.methods import MethodParameterError
from workers.worker import JobFailed, Worker, _problem_for

GATEWAY_KINDS = {cls.kind.slug: cls.kind for cls in errors.ApiError.__subclasses__()}
PIXEL_LIMIT = 100


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture()
def worker(redis_url: str) -> Iterator[Worker]:
    settings = WorkerSettings(redis_url=redis_url, max_image_pixels=PIXEL_LIMIT)
    sealer = PayloadSealer.from_key_file(settings.payload_key_file)
    yield Worker(settings, {}, redis.Redis.from_url(redis_url), sealer)


def decode_failure(worker: Worker, data: bytes | None, dicom: DicomOptions | None) -> Problem:
    job_id = uuid.uuid4().hex
    if data is not None:
        image_key = keys.job_image(job_id)
        worker.store.redis.set(image_key, worker.store.sealer.seal(data, image_key), ex=60)
    message = ExplanationJob(
        job_id=job_id,
        model="m",
        enqueued_at=0.0,
        methods=["gradcam"],
        target="top1",
        params={},
        output=OutputOptions(),
        dicom=dicom,
    )
    with pytest.raises(JobFailed) as failed:
        worker._decode(message)
    return failed.value.problem


GREY = Image.fromarray(np.zeros((8, 8), np.uint8))
BIG = Image.fromarray(np.zeros((11, 10), np.uint8))  # 110 pixels, past PIXEL_LIMIT


@pytest.mark.parametrize(
    ("data", "dicom", "slug"),
    [
        (encoded(BIG, "PNG"), None, "too-large"),
        (encoded(GREY, "GIF"), None, "unsupported-media-type"),
        (encoded(GREY, "PNG")[:40], None, "bad-image"),
        (dicom_file(np.zeros((8, 8), np.uint8)), DicomOptions(frame=1), "invalid-request"),
        (None, None, "image-expired"),
    ],
)
def test_a_decoding_failure_is_the_gateways_problem_kind(
    worker: Worker, data: bytes | None, dicom: DicomOptions | None, slug: str
) -> None:
    problem = decode_failure(worker, data, dicom)
    kind = PROBLEM_KINDS[slug]
    assert (problem.type, problem.status, problem.title) == (kind.type, kind.status, kind.title)
    if slug in GATEWAY_KINDS:
        assert GATEWAY_KINDS[slug] == kind


def test_the_worker_reads_the_shared_pixel_limit(worker: Worker) -> None:
    problem = decode_failure(worker, encoded(BIG, "PNG"), None)
    assert str(PIXEL_LIMIT) in (problem.detail or "")


def test_compute_failures_are_named_kinds() -> None:
    invalid = _problem_for(MethodParameterError("steps", "bad"))
    assert invalid.title == problems.INVALID_REQUEST.title
    assert _problem_for(RuntimeError("boom")).type == problems.ATTRIBUTION_FAILED.type


def test_every_gateway_error_names_a_registered_kind() -> None:
    assert GATEWAY_KINDS, "service.errors defines the gateway's exceptions"
    for slug, kind in GATEWAY_KINDS.items():
        assert PROBLEM_KINDS[slug] is kind
    titles = [(kind.status, kind.title) for kind in PROBLEM_KINDS.values()]
    assert len(set(titles)) == len(titles)
