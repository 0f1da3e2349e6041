"""Service throughput at saturation against the same method called in-process (SPEC §9).

For each method, on the demo model and `--images` distinct demo images:

- in-process: a forward pass for the predicted class, then `workers.methods.explain`, on
  batches of `GLIMPSE_MAX_BATCH` (8) normalised images in this process: maps per second;
- service: a private Redis, the gateway and one worker (result cache off), `--clients`
  concurrent clients sending every image once (`POST /v1/explanations`, no overlay, no scores):
  maps per second of wall time, and the ratio service / in-process.

Everything shares this machine's cores: the gateway, Redis and the clients take CPU the worker
would otherwise have, so the ratio is a lower bound of what a worker on its own cores reaches.
The CPU-seconds each process used are printed to show where the time went.
"""

import argparse
import asyncio
import base64
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import cpu_seconds, send_all
from service.devstack import DevStack, free_port
from workers.demo.data import make_sample, to_png_bytes
from workers.methods import Normalisation, explain
from workers.repository import load_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-lesions" / "1"
BATCH = 8


def in_process_rate(method: str, images: list[np.ndarray]) -> float:
    model = load_model(DEMO, torch.device("cpu"))
    spec = model.manifest.input
    normalisation = Normalisation(tuple(spec.mean), tuple(spec.std))
    inputs = (torch.from_numpy(np.stack(images))[:, None] - spec.mean[0]) / spec.std[0]

    def run() -> None:
        for start in range(0, len(inputs), BATCH):
            batch = inputs[start : start + BATCH]
            # The predicted class is the target, as the service's default `top1`.
            with torch.no_grad():
                targets = model.module(batch).argmax(dim=1)
            explain(
                method,
                model.module,
                batch,
                targets,
                {},
                cam_layer=model.default_cam_layer,
                normalisation=normalisation,
            )

    run()  # warm
    started = time.perf_counter()
    run()
    return len(inputs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "saliency"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    samples = [make_sample(50_000 + i).image for i in range(args.images)]
    bodies = [base64.b64encode(to_png_bytes(image)).decode() for image in samples]
    stack = DevStack(
        port=free_port(),
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MODEL_REPOSITORY": str(ROOT / "models"),
            "GLIMPSE_RESULT_CACHE": "off",
        },
    )
    try:
        stack.start()
        stack.wait_ready(timeout_s=120)
        worker, gateway = stack.processes[0], stack.processes[-1]
        for method in args.methods:
            alone = in_process_rate(method, samples)
            request = {
                "model": "demo-lesions",
                "methods": [method],
                "output": {"overlay": False, "scores": "none"},
            }
            asyncio.run(send_all(stack.url, request, bodies[:BATCH], args.clients))  # warm
            before = {
                name: cpu_seconds(p.pid) for name, p in (("worker", worker), ("gateway", gateway))
            }
            client_before = time.process_time()
            served = asyncio.run(send_all(stack.url, request, bodies, args.clients))
            used = {
                name: cpu_seconds(p.pid) - before[name]
                for name, p in (("worker", worker), ("gateway", gateway))
            }
            clients_cpu = time.process_time() - client_before
            print(
                f"{method:10s} in-process {alone:6.1f} maps/s   service {served:6.1f} maps/s   "
                f"ratio {served / alone:.2f}   CPU-s: worker {used['worker']:.1f}, "
                f"gateway {used['gateway']:.1f}, clients {clients_cpu:.1f}",
                flush=True,
            )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
