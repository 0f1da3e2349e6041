"""Twice the load the service can take (SPEC §9): admitted requests keep their latency, the rest
get a fast 429.

Starts a private Redis, the gateway (queue limit `--queue-limit` per model) and one worker on
the demo model, result cache off. Measures, for saliency with no overlay and no scores:

1. the latency of sequential requests (no load);
2. the capacity: maps per second with `--clients` concurrent clients (closed loop);
3. an open loop at `--factor` × that capacity for `--seconds`: requests sent on a fixed schedule
   whatever the answers; for the admitted ones (200) and the refused ones (429), how many and
   their p50 / p95 latency.
"""

import argparse
import asyncio
import base64
import statistics
import time
from pathlib import Path

import httpx

from service.devstack import DevStack, free_port
from workers.demo.data import make_sample, to_png_bytes

ROOT = Path(__file__).resolve().parent.parent


def body(image: str) -> dict[str, object]:
    return {
        "model": "demo-lesions",
        "image": image,
        "methods": ["saliency"],
        "output": {"overlay": False, "scores": "none"},
    }


def percentiles(values: list[float]) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"p50 {statistics.median(ordered):.0f} ms, p95 {p95:.0f} ms"


async def timed_post(client: httpx.AsyncClient, image: str) -> tuple[int, float]:
    started = time.perf_counter()
    answer = await client.post("/v1/explanations", json=body(image))
    return answer.status_code, (time.perf_counter() - started) * 1000


async def sequential(url: str, images: list[str]) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return [(await timed_post(client, image))[1] for image in images]


async def capacity(url: str, images: list[str], clients: int) -> float:
    pending = list(images)

    async def loop(client: httpx.AsyncClient) -> None:
        while pending:
            status, _ = await timed_post(client, pending.pop())
            assert status == 200, status

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(loop(client) for _ in range(clients)))
    return len(images) / (time.perf_counter() - started)


async def open_loop(
    url: str, images: list[str], rate: float, seconds: float
) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for index in range(int(rate * seconds)):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed_post(client, images[index % len(images)])))
        return await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--queue-limit", type=int, default=16)
    args = parser.parse_args()
    images = [
        base64.b64encode(to_png_bytes(make_sample(70_000 + i).image)).decode() for i in range(64)
    ]
    stack = DevStack(
        port=free_port(),
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_MODEL_REPOSITORY": str(ROOT / "models"),
            "GLIMPSE_RESULT_CACHE": "off",
            "GLIMPSE_QUEUE_LIMIT": str(args.queue_limit),
        },
    )
    try:
        stack.start()
        stack.wait_ready(timeout_s=120)
        asyncio.run(sequential(stack.url, images[:8]))  # warm
        idle = asyncio.run(sequential(stack.url, images[:32]))
        print(f"no load: {percentiles(idle)}")
        rate = asyncio.run(capacity(stack.url, images * 2, args.clients))
        print(f"capacity with {args.clients} clients: {rate:.1f} maps/s")
        offered = args.factor * rate
        results = asyncio.run(open_loop(stack.url, images, offered, args.seconds))
        admitted = [ms for status, ms in results if status == 200]
        refused = [ms for status, ms in results if status == 429]
        other = len(results) - len(admitted) - len(refused)
        print(
            f"open loop at {offered:.1f} requests/s ({args.factor:g}× capacity) for "
            f"{args.seconds:.0f} s, queue limit {args.queue_limit}: {len(results)} sent"
        )
        per_second = len(admitted) / args.seconds
        print(f"  admitted {len(admitted)} ({per_second:.1f}/s): {percentiles(admitted)}")
        print(f"  refused with 429 {len(refused)}: {percentiles(refused)}")
        print(f"  other answers {other}")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
