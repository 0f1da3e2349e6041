"""The shared-pass planner: the gradient methods of one request share their forward and backward
passes, and each still gives the map it gives alone; the worker's batch takes its predictions from
the first method's forward."""

import itertools
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from method_checks import EPS32, float32_rounding, max_relative_deviation
from method_models import calibrated_resnet18, small_cnn
from torch import nn

from schemas.explain import OutputOptions, Target
from schemas.jobs import ExplanationJob
from workers.demo.data import make_sample, to_png_bytes
from workers.images import decode_image
from workers.methods import Normalisation, TargetError, explain, get_method, resolve
from workers.methods.passes import PassMethod, run_passes
from workers.pipeline import PreparedJob, _model_inputs, compute_maps
from workers.repository import LoadedModel, load_model

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"

# On small_cnn: layer "6" is the default CAM layer, "2" an earlier one.
REQUESTS: dict[str, dict[str, Any]] = {
    "saliency": {"abs": True},
    "gradcam": {},
    "guided_backprop": {"abs": False},
    "guided_gradcam": {},
    "hirescam": {"layer": "2"},
}
COMBINATIONS = [
    combination
    for size in range(2, len(REQUESTS) + 1)
    for combination in itertools.combinations(REQUESTS, size)
]


def planned(methods: tuple[str, ...], cam_layer: str) -> list[tuple[PassMethod[Any], Any]]:
    result = []
    for method in methods:
        implementation = get_method(method)
        assert isinstance(implementation, PassMethod)
        result.append((implementation, resolve(method, REQUESTS[method], cam_layer=cam_layer)))
    return result


def assert_each_as_alone(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: list[list[int]],
    methods: tuple[str, ...],
    cam_layer: str,
) -> None:
    """`run_passes` over the methods together against each method alone on every (image,
    target) row, in float64."""
    result = run_passes(model, inputs, planned(methods, cam_layer), lambda _: targets, cam_layer)
    images = [i for i, classes in enumerate(targets) for _ in classes]
    row_targets = torch.tensor([c for classes in targets for c in classes])
    for method, together in zip(methods, result.maps, strict=True):
        alone = explain(
            method, model, inputs[images], row_targets, REQUESTS[method], cam_layer=cam_layer
        )
        assert together.values.shape == alone.values.shape
        assert together.signed == alone.signed
        assert alone.values.abs().amax() > 0, method
        # Both round the same float64 values to float32: they may differ by one rounding.
        deviation = (together.values - alone.values).abs().amax()
        assert deviation <= EPS32 * alone.values.abs().amax(), method


@pytest.mark.parametrize("methods", COMBINATIONS, ids="+".join)
def test_each_method_of_a_combination_gives_its_map_alone(methods: tuple[str, ...]) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(3)).double()

    assert_each_as_alone(model, inputs, [[0, 2], [4], [1, 3, 0]], methods, "6")


def test_on_resnet18_the_three_cam_gradient_methods_share_and_agree() -> None:
    model = calibrated_resnet18(size=32, passes=2)
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)).double()

    assert_each_as_alone(
        model, inputs, [[7], [999, 3]], ("gradcam", "saliency", "guided_gradcam"), "layer4"
    )


@contextmanager
def counted_passes(module: nn.Module) -> Iterator[dict[str, int]]:
    """Counts the forward and backward passes through `module`."""
    counts = {"forward": 0, "backward": 0}

    def forward(*_: object) -> None:
        counts["forward"] += 1

    def backward(*_: object) -> None:
        counts["backward"] += 1

    handles = [module.register_forward_hook(forward), module.register_full_backward_hook(backward)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize(
    ("methods", "forwards", "backwards"),
    [
        (("gradcam",), 1, 0),  # alone, the backward stops at the layer
        (("saliency",), 1, 1),
        (("gradcam", "saliency", "hirescam"), 1, 1),  # one plain pass for all three
        (("guided_backprop", "guided_gradcam"), 2, 1),  # one guided pass, one to the layer
        (("gradcam", "saliency", "guided_gradcam"), 2, 2),  # plain and guided, once each
    ],
)
def test_a_request_runs_one_forward_and_backward_per_rule(
    methods: tuple[str, ...], forwards: int, backwards: int
) -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5)).double()
    first_conv = model[0]

    # The guided model shares the model's modules, so the first conv counts both rules' passes.
    with counted_passes(first_conv) as counts:
        run_passes(model, inputs, planned(methods, "6"), lambda _: [[1], [2]], "6")

    assert counts == {"forward": forwards, "backward": backwards}


def test_targets_are_chosen_from_the_first_forward_before_any_backward() -> None:
    model = small_cnn()
    inputs = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(6)).double()
    seen: list[torch.Tensor] = []

    def top1(logits: torch.Tensor) -> list[list[int]]:
        seen.append(logits)
        return [[int(c)] for c in logits.argmax(1)]

    result = run_passes(model, inputs, planned(("saliency", "gradcam"), "6"), top1, "6")

    assert len(seen) == 1 and not seen[0].requires_grad
    with torch.no_grad():
        expected = model(inputs)
    assert max_relative_deviation(seen[0], expected) <= float32_rounding(expected, 1)
    assert result.targets == [[int(c)] for c in expected.argmax(1)]


def test_a_target_outside_the_classes_is_refused() -> None:
    model = small_cnn()
    inputs = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(7)).double()

    with pytest.raises(TargetError):
        run_passes(model, inputs, planned(("saliency",), "6"), lambda _: [[5]], "6")


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return load_model(DEMO, torch.device("cpu"))


def prepared(target: Target, seed: int, methods: list[str]) -> PreparedJob:
    message = ExplanationJob.model_validate(
        {
            "job_id": uuid.uuid4().hex,
            "model": "demo-lesions",
            "enqueued_at": time.time(),
            "methods": methods,
            "target": target,
            "params": {},
            "output": OutputOptions(overlay=False, size="model"),
        }
    )
    image = decode_image(to_png_bytes(make_sample(seed).image))
    return PreparedJob(message, image, time.time())


@pytest.mark.parametrize("max_rows", [2, 8])
def test_the_batch_takes_its_predictions_from_the_methods_forward(
    demo: LoadedModel, max_rows: int
) -> None:
    methods = ["gradcam", "saliency", "guided_gradcam"]
    jobs = [prepared("top3", 1, methods), prepared([2, 0], 2, methods), prepared(1, 3, methods)]

    with counted_passes(demo.module) as counts:
        computed = compute_maps(demo, jobs, max_rows)

    # One plain forward per chunk of jobs: the predictions' and every method's (the guided
    # pass runs through the canonical form, which this hook does not see).
    assert counts["forward"] == -(-len(jobs) // max_rows)
    batch = _model_inputs(demo, jobs)
    expected_logits = demo.forward_logits(batch)
    assert max_relative_deviation(torch.tensor(computed.logits), expected_logits) <= 1e-6
    top3 = expected_logits[0].argsort(descending=True)[:3].tolist()
    for method in methods:
        maps = [m for m in computed.maps if m.method == method]
        assert [(m.row.job, m.row.class_index) for m in maps] == [
            (0, top3[0]),
            (0, top3[1]),
            (0, top3[2]),
            (1, 2),
            (1, 0),
            (2, 1),
        ]
        rows = torch.tensor([m.row.job for m in maps])
        targets = torch.tensor([m.row.class_index for m in maps])
        alone = explain(
            method, demo.module, batch[rows], targets, {}, cam_layer=demo.default_cam_layer
        )
        together = torch.stack([torch.from_numpy(m.values) for m in maps])
        assert max_relative_deviation(together, alone.values) <= 1e-6, method


def test_a_batch_mixing_shared_and_other_methods_answers_both(demo: LoadedModel) -> None:
    methods = ["saliency", "integrated_gradients"]
    jobs = [prepared("top1", 4, methods), prepared(2, 5, methods)]

    computed = compute_maps(demo, jobs, 8)

    batch = _model_inputs(demo, jobs)
    spec = demo.manifest.input
    targets = torch.tensor([int(demo.forward_logits(batch)[0].argmax()), 2])
    for method in methods:
        maps = [m for m in computed.maps if m.method == method]
        assert [(m.row.job, m.row.class_index) for m in maps] == [(0, int(targets[0])), (1, 2)]
        alone = explain(
            method,
            demo.module,
            batch,
            targets,
            {},
            cam_layer=demo.default_cam_layer,
            forward=demo.forward_logits,
            normalisation=Normalisation(tuple(spec.mean), tuple(spec.std)),
        )
        together = torch.stack([torch.from_numpy(m.values) for m in maps])
        assert max_relative_deviation(together, alone.values) <= 1e-6, method


def test_an_onnx_model_takes_its_predictions_from_onnx_runtime(tmp_path: Path) -> None:
    version = tmp_path / "demo-lesions" / "1"
    version.mkdir(parents=True)
    manifest = json.loads((DEMO / "manifest.json").read_text())
    manifest["format"] = "onnx"
    manifest.pop("architecture")
    manifest["cam_layer"] = "features/features/14/Relu"  # the conversion names layers by node
    (version / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(DEMO / "model.onnx", version / "model.onnx")
    twin = load_model(version, torch.device("cpu"))
    assert twin.onnx_session is not None
    jobs = [prepared("top1", 6, ["saliency", "gradcam"]), prepared(0, 7, ["saliency", "gradcam"])]

    computed = compute_maps(twin, jobs, 8)

    batch = _model_inputs(twin, jobs)
    # ONNX Runtime's own logits, not the conversion's: equal, not merely close.
    assert computed.logits == twin.forward_logits(batch).float().tolist()
    top1 = int(torch.tensor(computed.logits[0]).argmax())
    for method in ("saliency", "gradcam"):
        maps = [m for m in computed.maps if m.method == method]
        assert [(m.row.job, m.row.class_index) for m in maps] == [(0, top1), (1, 0)]
        alone = explain(
            method,
            twin.module,
            batch,
            torch.tensor([top1, 0]),
            {},
            cam_layer=twin.default_cam_layer,
        )
        together = torch.stack([torch.from_numpy(m.values) for m in maps])
        assert max_relative_deviation(together, alone.values) <= 1e-6, method
