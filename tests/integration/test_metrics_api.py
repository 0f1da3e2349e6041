"""`GET /metrics` against the real stack: what a worker did shows up on the gateway's scrape."""

import base64
import signal
import time

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from schemas import keys
from service.devstack import DevStack
from workers.demo.data import make_sample, to_png_bytes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def idle_scrape(client: httpx.Client) -> Samples:
    """A scrape once no model has a job queued or in hand (earlier tests may leave some)."""
    deadline = time.monotonic() + 300
    while True:
        samples = scrape(client)
        if all(value == 0 for (name, _), value in samples.items() if name == "glimpse_queue_depth"):
            return samples
        assert time.monotonic() < deadline, "the queues never drained"
        time.sleep(0.2)


def increase(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after[key] - before.get(key, 0.0)


def test_a_scrape_shows_the_workers_maps_jobs_batches_and_failures(
    client: httpx.Client, stack: DevStack, redis_url: str
) -> None:
    # Images no other test sends: a request answered from the result cache reaches no worker.
    image, other = (
        base64.b64encode(to_png_bytes(make_sample(seed).image)).decode() for seed in (90301, 90302)
    )
    before = idle_scrape(client)

    answer = client.post(
        "/v1/explanations",
        json={"model": "demo-lesions", "image": image, "methods": ["gradcam", "saliency"]},
    )
    assert answer.status_code == 200, answer.text
    # A job whose image expires while the worker is paused fails with `image-expired`.
    worker = stack.processes[0]
    worker.send_signal(signal.SIGSTOP)
    try:
        queued = client.post(
            "/v1/jobs", json={"model": "demo-lesions", "image": other, "methods": ["gradcam"]}
        )
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["job_id"]
        assert redis.Redis.from_url(redis_url).delete(keys.job_image(job_id)) == 1
    finally:
        worker.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "failed":
        assert time.monotonic() < deadline, "the job without an image never failed"
        time.sleep(0.1)

    after = scrape(client)

    for method in ("gradcam", "saliency"):
        assert increase(before, after, "glimpse_map_compute_seconds_count", method=method) == 1
        assert (
            increase(before, after, "glimpse_map_compute_seconds_bucket", method=method, le="+Inf")
            == 1
        )
    computed = increase(before, after, "glimpse_map_compute_seconds_sum", method="gradcam")
    took_ms = answer.json()["explanations"][0]["compute_ms"]
    assert abs(computed - took_ms / 1000) < 1e-6
    assert increase(before, after, "glimpse_job_seconds_count", model="demo-lesions") == 1
    assert increase(before, after, "glimpse_batch_size_count", model="demo-lesions") == 1
    assert increase(before, after, "glimpse_jobs_failed_total", kind="image-expired") == 1
    assert increase(before, after, "glimpse_worker_events_total", event="results_stored") == 1
    route = (("method", "POST"), ("route", "/v1/explanations"), ("status", "200"))
    assert after[("glimpse_http_requests_total", route)] >= 1
    assert after[("glimpse_queue_depth", (("model", "demo-lesions"),))] == 0
    assert after[("glimpse_model_workers", (("model", "demo-lesions"),))] >= 1
    assert after[("glimpse_workers", ())] >= 1
    assert after[("glimpse_redis_up", ())] == 1
