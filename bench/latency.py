"""End-to-end latency of explanation requests on the demo model, through the real stack.

Starts a private Redis, a gateway and one worker (or uses `--url`), then sends `--requests`
sequential requests per method and prints p50/p95/max latency and the time to ready.
"""

import argparse
import base64
import statistics
import time
from pathlib import Path

import httpx

from service.devstack import DevStack, free_port
from workers.demo.data import make_sample, to_png_bytes

ROOT = Path(__file__).resolve().parent.parent


def measure(url: str, method: str, requests: int) -> list[float]:
    images = [
        base64.b64encode(to_png_bytes(make_sample(10_000 + i).image)).decode()
        for i in range(requests)
    ]
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post(
            "/v1/explanations",
            json={"model": "demo-lesions", "image": images[0], "methods": [method]},
        )
        for image in images:
            started = time.perf_counter()
            answer = client.post(
                "/v1/explanations",
                json={"model": "demo-lesions", "image": image, "methods": [method]},
            )
            latencies.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running gateway (auth off); default: start a stack")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--methods", default="gradcam,saliency")
    args = parser.parse_args()

    stack = None
    url = args.url
    if url is None:
        stack = DevStack(
            port=free_port(),
            env={
                "GLIMPSE_AUTH": "off",
                "GLIMPSE_DEVICE": "cpu",
                "GLIMPSE_MODEL_REPOSITORY": str(ROOT / "models"),
            },
        )
        started = time.perf_counter()
        stack.start()
        stack.wait_ready()
        print(f"stack ready in {time.perf_counter() - started:.2f} s")
        url = stack.url
    try:
        print(f"{'method':<12} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for method in args.methods.split(","):
            latencies = sorted(measure(url, method, args.requests))
            p95 = latencies[int(0.95 * (len(latencies) - 1))]
            print(
                f"{method:<12} {len(latencies):>4} {statistics.median(latencies):>8.1f} "
                f"{p95:>8.1f} {latencies[-1]:>8.1f}"
            )
    finally:
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    main()
