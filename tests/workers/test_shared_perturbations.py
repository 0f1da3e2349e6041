"""Forward-only methods share their forward calls: occlusion and RISE in one request fill common
batches of perturbed inputs, and each still gives the map it gives alone."""

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from method_checks import max_relative_deviation
from method_models import small_cnn
from torch import nn

from schemas.explain import OutputOptions
from schemas.jobs import ExplanationJob
from workers.demo.data import make_sample, to_png_bytes
from workers.images import decode_image
from workers.methods import Normalisation, explain, explain_jointly
from workers.methods.base import run_perturbations
from workers.pipeline import PreparedJob, _model_inputs, compute_maps
from workers.repository import LoadedModel, load_model

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"
PARAMS: dict[str, dict[str, object]] = {
    "occlusion": {"window": 4, "stride": 2, "batch_size": 8},
    "rise": {"masks": 40, "cell": 4, "batch_size": 8, "seed": 3},
}


def counting(model: nn.Module, calls: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(inputs: torch.Tensor) -> torch.Tensor:
        calls.append(inputs.shape[0])
        return model(inputs)

    return forward


def test_occlusion_and_rise_together_give_each_map_alone_in_fewer_fuller_calls() -> None:
    model = small_cnn()
    images = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5)).double()
    # Image 0 twice (two targets), image 1 once: three rows, two distinct images.
    inputs, targets = images[[0, 0, 1]], torch.tensor([1, 3, 2])
    methods = list(PARAMS)
    joint_calls: list[int] = []
    together = explain_jointly(
        methods,
        model,
        inputs,
        targets,
        [PARAMS[m] for m in methods],
        cam_layer="6",
        forward=counting(model, joint_calls),
    )
    alone_calls: list[int] = []
    for method, shared in zip(methods, together, strict=True):
        alone = explain(
            method,
            model,
            inputs,
            targets,
            PARAMS[method],
            cam_layer="6",
            forward=counting(model, alone_calls),
        )
        # float64 throughout: a forward call's other rows change a row's output by the rounding
        # of a reordered sum at most (~1e-16 relative), far inside the 1e-6 asked.
        assert max_relative_deviation(shared.values, alone.values) <= 1e-6, method
        assert shared.signed == alone.signed
    # Per distinct image, occlusion needs 1 + 25 rows (the image, then 25 windows of 4 at stride
    # 2 over 12 px in 4 calls of at most 8) and RISE 40 (5 calls of 8): 10 calls alone, their
    # partial calls half empty. Together they fill calls of 8: ceil(66 / 8) = 9 per image.
    assert sum(alone_calls) == sum(joint_calls) == 2 * (1 + 25 + 40)
    assert len(alone_calls) == 2 * (1 + 4 + 5)
    assert len(joint_calls) == 2 * -(-66 // 8)
    assert sorted(joint_calls) == [2, 2] + [8] * 16


def test_a_plan_alone_runs_exactly_the_calls_it_asks_for() -> None:
    sizes: list[int] = []

    def plan() -> object:
        total = torch.zeros(())
        for rows in (3, 5, 1):
            scored = yield torch.ones(rows, 2)
            total = total + scored.sum()
        return total

    [total] = run_perturbations(lambda x: sizes.append(x.shape[0]) or x * 2, [plan()], limit=5)  # type: ignore[list-item, func-returns-value]
    assert sizes == [3, 5, 1]
    assert float(total) == 2 * 2 * (3 + 5 + 1)


def test_a_batch_straddling_two_calls_gets_its_outputs_in_order() -> None:
    def plan(start: float) -> object:
        inputs = torch.arange(start, start + 6).view(6, 1)
        scored = yield inputs
        return scored

    sizes: list[int] = []
    first, second = run_perturbations(
        lambda x: sizes.append(x.shape[0]) or x + 0.5,  # type: ignore[func-returns-value]
        [plan(0.0), plan(100.0)],  # type: ignore[list-item]
        limit=4,
    )
    assert sizes == [4, 4, 4]
    torch.testing.assert_close(first, torch.arange(0.0, 6.0).view(6, 1) + 0.5)
    torch.testing.assert_close(second, torch.arange(100.0, 106.0).view(6, 1) + 0.5)


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return load_model(DEMO, torch.device("cpu"))


def prepared(seed: int, methods: list[str]) -> PreparedJob:
    message = ExplanationJob.model_validate(
        {
            "job_id": uuid.uuid4().hex,
            "model": "demo-lesions",
            "enqueued_at": time.time(),
            "methods": methods,
            "target": "top2",
            "params": {"occlusion": {"stride": 16}, "rise": {"masks": 100}},
            "output": OutputOptions(overlay=False, size="model"),
        }
    )
    image = decode_image(to_png_bytes(make_sample(seed).image))
    return PreparedJob(message, image, time.time())


def test_the_worker_runs_a_request_s_occlusion_and_rise_jointly(demo: LoadedModel) -> None:
    methods = ["occlusion", "saliency", "rise"]
    jobs = [prepared(7, methods), prepared(8, methods)]

    computed = compute_maps(demo, jobs, 8)

    assert [m.method for m in computed.maps] == [m for m in methods for _ in range(4)]
    batch = _model_inputs(demo, jobs)
    spec = demo.manifest.input
    for method in ("occlusion", "rise"):
        maps = [m for m in computed.maps if m.method == method]
        rows = torch.tensor([m.row.job for m in maps])
        targets = torch.tensor([m.row.class_index for m in maps])
        alone = explain(
            method,
            demo.module,
            batch[rows],
            targets,
            jobs[0].message.params[method],
            cam_layer=demo.default_cam_layer,
            forward=demo.forward_logits,
            normalisation=Normalisation(tuple(spec.mean), tuple(spec.std)),
        )
        together = torch.stack([torch.from_numpy(m.values) for m in maps])
        # float32: a row's logits in a call of other rows differ from its own call's by the
        # rounding of reordered sums; relative to a map's range that is ~1e-7 here.
        assert max_relative_deviation(together, alone.values) <= 1e-6, method
