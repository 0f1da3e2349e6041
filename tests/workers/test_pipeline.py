"""The worker's pipeline on the shipped demo model: which jobs share a batch, and a batch of jobs
with their own targets answered job by job, whatever the size of the chunks the methods run in."""

import time
import uuid
from pathlib import Path

import pytest
import torch

from schemas.explain import OutputOptions, Target
from schemas.jobs import ExplanationJob
from workers.demo.data import make_sample, to_png_bytes
from workers.images import decode_image
from workers.pipeline import BatchKey, PreparedJob, explain_jobs
from workers.repository import LoadedModel, load_model

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"
METHODS = ["gradcam", "saliency"]


@pytest.fixture(scope="module")
def demo_model() -> LoadedModel:
    return load_model(DEMO, torch.device("cpu"))


def message(target: Target, **fields: object) -> ExplanationJob:
    values: dict[str, object] = {
        "job_id": uuid.uuid4().hex,
        "model": "demo-lesions",
        "enqueued_at": time.time(),
        "methods": METHODS,
        "target": target,
        "params": {"saliency": {"abs": True}, "gradcam": {"layer": None}},
        "output": OutputOptions(overlay=False, size="model", grid=4),
        **fields,
    }
    return ExplanationJob.model_validate(values)


def prepared(target: Target, seed: int) -> PreparedJob:
    image = decode_image(to_png_bytes(make_sample(seed).image))
    return PreparedJob(message(target), image, time.time())


def test_jobs_with_equal_parameters_in_any_order_share_a_key() -> None:
    key = BatchKey.of(message("top1"))
    reordered = message(2, params={"gradcam": {"layer": None}, "saliency": {"abs": True}})
    assert BatchKey.of(reordered) == key
    assert hash(BatchKey.of(reordered)) == hash(key)
    assert len({key, BatchKey.of(reordered)}) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "other"},
        {"methods": list(reversed(METHODS))},
        {"params": {"saliency": {"abs": False}, "gradcam": {"layer": None}}},
        {"params": {"saliency": {"abs": True}, "gradcam": {"layer": "features.3"}}},
    ],
)
def test_jobs_that_differ_in_model_methods_or_parameters_do_not(fields: dict[str, object]) -> None:
    assert BatchKey.of(message("top1", **fields)) != BatchKey.of(message("top1"))


@pytest.mark.parametrize("max_rows", [1, 2, 8])
def test_a_batch_answers_each_job_with_its_own_targets(
    demo_model: LoadedModel, max_rows: int
) -> None:
    jobs = [prepared("top3", 1), prepared([2, 0], 2), prepared(1, 3)]

    responses = explain_jobs(demo_model, jobs, max_rows)

    assert [r.job_id for r in responses] == [job.message.job_id for job in jobs]
    top3 = [p.class_index for p in responses[0].predictions][:3]
    for response, classes in zip(responses, [top3, [2, 0], [1]], strict=True):
        scores = [p.score for p in response.predictions]
        assert scores == sorted(scores, reverse=True)
        assert [(e.method, e.target.class_index) for e in response.explanations] == [
            (method, c) for method in METHODS for c in classes
        ]
        assert all(e.scores is not None and e.scores.shape == [4, 4] for e in response.explanations)
        assert response.provenance.params == {
            "gradcam": {"layer": demo_model.default_cam_layer},
            "saliency": {"abs": True},
        }
        assert response.timings.compute_ms > 0 and response.timings.render_ms > 0
