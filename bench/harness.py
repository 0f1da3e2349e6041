"""What the benchmarks share: calibrated torchvision models and a model folder for them, timing,
a process's CPU time, and clients that keep the whole service saturated."""

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision import models

CAM_LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "densenet121": "features"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def calibrated(name: str, size: int, batches: int = 2, batch_size: int = 4) -> nn.Module:
    """A torchvision model, seeded random weights, BatchNorm statistics from `batches` random
    batches of `batch_size` images (a cumulative average)."""
    torch.manual_seed(0)
    model = getattr(models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, 3, size, size))
    return model.eval().requires_grad_(False)


def write_torchvision_model(
    repository: Path, name: str, model: nn.Module, size: int, description: str | None = None
) -> Path:
    """`<repository>/<name>/1/`: `model`'s weights as safetensors and a manifest that builds it
    with `torchvision.models:<name>`, ImageNet's normalisation and 1000 numbered classes."""
    folder = repository / name / "1"
    folder.mkdir(parents=True)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    manifest = {
        "id": name,
        "version": "1",
        "format": "safetensors",
        "architecture": {"factory": f"torchvision.models:{name}", "kwargs": {}},
        "labels": [f"class {index}" for index in range(1000)],
        "input": {
            "channels": 3,
            "height": size,
            "width": size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "cam_layer": CAM_LAYERS[name],
        "description": description or f"torchvision {name} with random weights, calibrated",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """The median wall time of `run`, after a warm-up (canonical forms, allocator, cuDNN)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time that process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def send_all(url: str, request: dict[str, Any], images: list[str], clients: int) -> float:
    """`clients` concurrent clients post `request` (`POST /v1/explanations`) once for each
    base64 image until every image is done; maps per second of wall time (one map per image and
    method)."""
    pending = list(range(len(images)))
    methods = len(request["methods"])

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=330) as client:
            while pending:
                index = pending.pop()
                answer = await client.post(
                    "/v1/explanations?timeout=300", json={**request, "image": images[index]}
                )
                answer.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return methods * len(images) / (time.perf_counter() - started)
