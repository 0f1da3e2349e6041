"""The worker's GPU paths, on a CUDA device: shared passes, the pipeline, mixed precision,
channels-last and the memory budget.

Marked `cuda`: pyproject's pytest options leave the marker out of the default run, and
`bench/device_check.sh` selects it on a GPU machine (`pytest -m cuda`), where these tests must
pass; without a CUDA device they fail rather than skip.
"""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from method_checks import EPS32, float32_rounding, max_relative_deviation
from method_models import small_cnn
from torch import nn
from torchvision.models import resnet50

from schemas.explain import OutputOptions
from schemas.jobs import ExplanationJob
from workers.demo.data import make_sample, to_png_bytes
from workers.images import decode_image
from workers.methods import explain
from workers.methods.base import ACTIVATION_BYTES_PER_INPUT_BYTE, set_pass_memory
from workers.pipeline import PreparedJob, compute_maps
from workers.precision import computing, prepare
from workers.repository import load_model

pytestmark = pytest.mark.cuda

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-lesions" / "1"
GRADIENT_METHODS = ["saliency", "gradcam", "guided_backprop", "guided_gradcam"]
# Guided backprop gates each ReLU's gradient by its sign, a branch that bfloat16's roundings flip
# near zero: its maps have no rounding bound (docs/benchmarks.md gives the deviation measured).
UNGATED = {"saliency", "gradcam"}
EPS_HALF = {"bfloat16": torch.finfo(torch.bfloat16).eps, "float16": torch.finfo(torch.float16).eps}


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    assert torch.cuda.is_available(), "the cuda tests need a CUDA device"
    return torch.device("cuda")


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_shared_passes_on_cuda_give_the_cpus_maps(cuda: torch.device, method: str) -> None:
    model = small_cnn()
    inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([0, 2, 4])
    expected = explain(method, model, inputs, targets, {}, cam_layer="6").values

    values = explain(method, model.to(cuda), inputs.to(cuda), targets, {}, cam_layer="6").values

    # float64 on both devices, each map rounded to float32 once.
    assert max_relative_deviation(values.cpu(), expected) <= float32_rounding(expected, 2)


def test_the_pipeline_on_cuda_answers_as_on_the_cpu(cuda: torch.device) -> None:
    methods = ["gradcam", "saliency", "guided_gradcam"]
    jobs = [
        PreparedJob(
            ExplanationJob.model_validate(
                {
                    "job_id": uuid.uuid4().hex,
                    "model": "demo-lesions",
                    "enqueued_at": time.time(),
                    "methods": methods,
                    "target": 1,
                    "params": {},
                    "output": OutputOptions(overlay=False, size="model"),
                }
            ),
            decode_image(to_png_bytes(make_sample(seed).image)),
            time.time(),
        )
        for seed in range(3)
    ]
    on_cpu = compute_maps(load_model(DEMO, torch.device("cpu")), jobs, 8)

    on_cuda = compute_maps(load_model(DEMO, cuda), jobs, 8)

    for a, b in zip(on_cuda.maps, on_cpu.maps, strict=True):
        assert (a.method, a.row) == (b.method, b.row)
        # float32 on two devices: different summation orders, relative to the map's range.
        difference = torch.from_numpy(a.values - b.values).abs().max()
        span = float(b.values.max() - b.values.min())
        assert difference <= 1e-3 * span, a.method


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_mixed_precision_on_cuda_keeps_maps_float32_and_close(
    cuda: torch.device, method: str, precision: str
) -> None:
    model = small_cnn().float().to(cuda)
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)).to(cuda)
    targets = torch.tensor([0, 2])
    full = explain(method, model, inputs, targets, {}, cam_layer="6").values

    with computing(cuda, precision):
        reduced = explain(method, model, inputs, targets, {}, cam_layer="6").values

    assert reduced.dtype == torch.float32
    deviation = max_relative_deviation(reduced.cpu(), full.cpu())
    assert deviation > 0  # the passes ran reduced
    if method in UNGATED:
        assert deviation <= float32_rounding(full.cpu(), 32) * EPS_HALF[precision] / EPS32


def test_channels_last_weights_give_the_same_maps(cuda: torch.device) -> None:
    demo = load_model(DEMO, cuda)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).to(cuda)
    targets = torch.tensor([0, 1])
    layer = demo.default_cam_layer
    expected = explain("gradcam", demo.module, inputs, targets, {}, cam_layer=layer).values

    prepare({"demo": demo}, 0)
    convolutions = [m for m in demo.module.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions[0].weight.is_contiguous(memory_format=torch.channels_last)
    values = explain("gradcam", demo.module, inputs, targets, {}, cam_layer=layer).values

    span = float(expected.max() - expected.min())
    assert float((values - expected).abs().max()) <= 1e-3 * span


@pytest.fixture()
def budget() -> Iterator[None]:
    yield
    set_pass_memory(0)


@pytest.mark.usefixtures("budget")
def test_smoothgrad_keeps_within_the_memory_budget(cuda: torch.device) -> None:
    torch.manual_seed(0)
    model = resnet50(weights=None).eval().requires_grad_(False).to(cuda)
    inputs = torch.randn(1, 3, 224, 224, device=cuda)
    targets = torch.tensor([3])
    per_copy = inputs.numel() * 4 * ACTIVATION_BYTES_PER_INPUT_BYTE
    set_pass_memory(4 * per_copy)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(cuda)
    before = torch.cuda.memory_allocated(cuda)

    explain("smoothgrad", model, inputs, targets, {"samples": 16}, cam_layer="layer4")

    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(cuda) - before
    assert peak <= 4 * per_copy, f"peak {peak / 2**20:.0f} MiB over {4 * per_copy / 2**20:.0f}"
