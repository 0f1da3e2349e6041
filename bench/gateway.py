"""The gateway's own cost: end-to-end latency on a trivial model, and admissions per CPU-second.

Starts a private Redis, the gateway and one worker serving `trivial`, an ONNX model of one 3×3
convolution, a ReLU, a global average pool and a linear layer on 8×8 grayscale images (so the
model's compute is negligible), with the result cache off.

1. Latency: `--requests` sequential `POST /v1/explanations` (saliency, scores as JSON, no
   overlay), each with a different image; p50/p95 end to end, and the worker's share (queue +
   compute + render, from the response's `timings`).
2. Admission: with the worker paused (SIGSTOP), `--clients` concurrent clients post
   `POST /v1/jobs` for `--seconds`; jobs admitted per second of wall time and per CPU-second
   the gateway process used (its user + system time from /proc), i.e. per core.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from torch import nn

from service.devstack import DevStack, free_port

SIZE = 8


def write_trivial_model(repository: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2),
    ).eval()
    folder = repository / "trivial" / "1"
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, SIZE, SIZE),),
            str(folder / "model.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    manifest = {
        "id": "trivial",
        "version": "1",
        "format": "onnx",
        "labels": ["a", "b"],
        "input": {"channels": 1, "height": SIZE, "width": SIZE, "mean": [0.5], "std": [0.25]},
        "description": "a trivial model, for measuring the service's own overhead",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def png(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def body(seed: int) -> dict[str, object]:
    return {
        "model": "trivial",
        "image": png(seed),
        "methods": ["saliency"],
        "output": {"overlay": False, "scores": "json"},
    }


def measure_latency(url: str, requests: int) -> None:
    totals, worker_parts = [], []
    parts: dict[str, list[float]] = {"queue_ms": [], "compute_ms": [], "render_ms": []}
    with httpx.Client(base_url=url, timeout=30) as client:
        for seed in range(10):  # warm: first calls load and trace
            client.post("/v1/explanations", json=body(1_000_000 + seed)).raise_for_status()
        for seed in range(requests):
            started = time.perf_counter()
            answer = client.post("/v1/explanations", json=body(seed))
            totals.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
            timings = answer.json()["timings"]
            worker_parts.append(sum(timings[part] for part in parts))
            for part, values in parts.items():
                values.append(timings[part])
    totals.sort()
    p50, p95 = statistics.median(totals), totals[int(0.95 * (len(totals) - 1))]
    print(f"latency over {requests} sequential requests (trivial model, saliency):")
    print(f"  end to end p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {totals[-1]:.1f} ms")
    print(
        f"  worker's share (queue + compute + render) p50 {statistics.median(worker_parts):.1f} ms"
        f" ({', '.join(f'{k[:-3]} {statistics.median(v):.1f}' for k, v in parts.items())})"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def admit_for(url: str, clients: int, seconds: float) -> tuple[int, int]:
    admitted = refused = 0
    payloads = [json.dumps(body(seed)).encode() for seed in range(64)]
    deadline = time.perf_counter() + seconds

    async def client_loop(index: int) -> None:
        nonlocal admitted, refused
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            sent = index
            while time.perf_counter() < deadline:
                answer = await client.post(
                    "/v1/jobs",
                    content=payloads[sent % len(payloads)],
                    headers={"content-type": "application/json"},
                )
                sent += clients
                if answer.status_code == 202:
                    admitted += 1
                else:
                    refused += 1

    await asyncio.gather(*(client_loop(index) for index in range(clients)))
    return admitted, refused


def measure_admission(stack: DevStack, clients: int, seconds: float) -> None:
    worker, gateway = stack.processes[0], stack.processes[-1]
    worker.send_signal(signal.SIGSTOP)
    try:
        cpu_before, started = cpu_seconds(gateway.pid), time.perf_counter()
        admitted, refused = asyncio.run(admit_for(stack.url, clients, seconds))
        wall, cpu = time.perf_counter() - started, cpu_seconds(gateway.pid) - cpu_before
    finally:
        worker.send_signal(signal.SIGCONT)
    print(f"admission with {clients} concurrent clients for {seconds:.0f} s (worker paused):")
    print(f"  {admitted} admitted, {refused} refused")
    print(f"  {admitted / wall:.0f} jobs/s of wall time; the gateway used {cpu:.1f} CPU-s")
    print(f"  {admitted / cpu:.0f} jobs per gateway CPU-second (per core)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        write_trivial_model(repository)
        stack = DevStack(
            port=free_port(),
            env={
                "GLIMPSE_AUTH": "off",
                "GLIMPSE_DEVICE": "cpu",
                "GLIMPSE_MODEL_REPOSITORY": str(repository),
                "GLIMPSE_RESULT_CACHE": "off",
                "GLIMPSE_QUEUE_LIMIT": "100000000",
                # The paused worker must stay live for the admission measurement.
                "GLIMPSE_WORKER_TIMEOUT_S": "3600",
            },
        )
        try:
            stack.start()
            stack.wait_ready(timeout_s=120)
            measure_latency(stack.url, args.requests)
            measure_admission(stack, args.clients, args.seconds)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
