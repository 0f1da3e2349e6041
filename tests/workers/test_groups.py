"""How the worker groups a batch's jobs: explanations by their `BatchKey`, visualizations by
model and settings, each group in the order its jobs were read."""

import itertools
import time
import uuid

import numpy as np

from schemas.explain import OutputOptions
from schemas.jobs import ExplanationJob, VisualizationJob
from schemas.visualizations import VisualizationParams
from workers.groups import BatchGroups, Entry, JobGroup
from workers.images import DecodedImage
from workers.pipeline import PreparedJob

ENTRY_IDS = (f"{n}-0" for n in itertools.count(1))
IMAGE = DecodedImage(np.zeros((8, 8, 1), np.float32), np.zeros((8, 8, 3), np.uint8))


def explanation(model: str, methods: list[str]) -> tuple[Entry, PreparedJob]:
    message = ExplanationJob(
        job_id=uuid.uuid4().hex,
        model=model,
        enqueued_at=time.time(),
        methods=methods,
        target="top1",
        params={method: {} for method in methods},
        output=OutputOptions(),
    )
    return Entry(model, next(ENTRY_IDS), message), PreparedJob(message, IMAGE, 0.0)


def visualization(model: str, steps: int) -> tuple[Entry, VisualizationJob]:
    message = VisualizationJob(
        job_id=uuid.uuid4().hex,
        model=model,
        enqueued_at=time.time(),
        visualization=VisualizationParams(target=0, steps=steps),
        cache_key=uuid.uuid4().hex,
    )
    return Entry(model, next(ENTRY_IDS), message), message


def test_explanations_that_share_every_pass_share_a_group_in_reading_order() -> None:
    first, other, second = (
        explanation("a", ["gradcam"]),
        explanation("a", ["saliency"]),
        explanation("a", ["gradcam"]),
    )
    groups = BatchGroups()
    for entry, job in (first, other, second):
        groups.add_explanation(entry, job)

    assert [[m.entry for m in g.members] for g in groups.explanations.values()] == [
        [first[0], second[0]],
        [other[0]],
    ]
    assert all(g.model_id == "a" for g in groups.explanations.values())
    assert groups.visualizations == {}


def test_visualizations_group_by_model_and_settings() -> None:
    jobs = [
        visualization("a", 8),
        visualization("b", 8),
        visualization("a", 8),
        visualization("a", 9),
    ]
    groups = BatchGroups()
    for entry, job in jobs:
        groups.add_visualization(entry, job)

    assert [(g.model_id, [m.job for m in g.members]) for g in groups.visualizations.values()] == [
        ("a", [jobs[0][1], jobs[2][1]]),
        ("b", [jobs[1][1]]),
        ("a", [jobs[3][1]]),
    ]


def test_a_group_splits_into_halves_that_keep_its_model_and_order() -> None:
    groups = BatchGroups()
    members = [explanation("a", ["gradcam"]) for _ in range(5)]
    for entry, job in members:
        groups.add_explanation(entry, job)
    (group,) = groups.explanations.values()

    first, second = group.halves()

    assert isinstance(first, JobGroup) and first.model_id == second.model_id == "a"
    assert [m.job for m in first.members + second.members] == [job for _, job in members]
    assert (len(first.members), len(second.members)) == (2, 3)
