"""Identical explain requests are answered from the result cache, without a worker."""

import base64
import signal
import time

import httpx
from model_infos import small_model_info  # type: ignore[import-not-found]

from schemas.explain import ExplainOptions
from service.admission import explanation_cache_key
from service.auth import Principal
from service.devstack import DevStack
from workers.demo.data import make_sample, to_png_bytes


def request(seed: int, **output: object) -> dict[str, object]:
    image = base64.b64encode(to_png_bytes(make_sample(seed).image)).decode()
    return {
        "model": "demo-lesions",
        "image": image,
        "methods": ["gradcam", "smoothgrad"],
        "params": {"smoothgrad": {"samples": 4}},
        "output": {"scores": "json", "grid": 8, **output},
    }


def test_a_repeated_request_is_answered_from_the_cache_without_a_worker(
    client: httpx.Client, stack: DevStack
) -> None:
    body = request(seed=901)
    first = client.post("/v1/explanations", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False

    worker = stack.processes[0]
    worker.send_signal(signal.SIGSTOP)  # a cached answer must not need a worker
    try:
        started = time.monotonic()
        again = client.post("/v1/explanations", json=body, params={"timeout": 5})
        elapsed = time.monotonic() - started
        queued = client.post("/v1/jobs", json=body)
        assert queued.status_code == 202, queued.text
        polled = client.get(f"/v1/jobs/{queued.json()['job_id']}").json()
    finally:
        worker.send_signal(signal.SIGCONT)

    assert again.status_code == 200, again.text
    assert elapsed < 2
    cached, original = again.json(), first.json()
    assert cached["cached"] is True
    assert cached["job_id"] != original["job_id"]
    for field in ("predictions", "explanations", "provenance", "model"):
        assert cached[field] == original[field], field
    # The original computation's timings, under the id of the request answered.
    assert cached["timings"] == {**original["timings"], "request_id": again.headers["x-request-id"]}
    assert original["timings"]["request_id"] == first.headers["x-request-id"]
    assert polled["status"] == "succeeded"
    assert polled["result"]["job_id"] == queued.json()["job_id"]
    assert polled["result"]["explanations"] == original["explanations"]


def test_another_image_or_other_options_are_computed_afresh(client: httpx.Client) -> None:
    assert client.post("/v1/explanations", json=request(seed=902)).json()["cached"] is False

    for body in (request(seed=903), request(seed=902, colormap="viridis")):
        answer = client.post("/v1/explanations", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["cached"] is False


def test_the_cache_key_covers_the_caller_the_image_the_weights_and_the_options() -> None:
    info = small_model_info()
    options = ExplainOptions(model="m", methods=["gradcam"])
    alice = Principal(name="alice", scopes=frozenset({"explain"}))

    def key(**changes: object) -> str:
        opts = options.model_copy(update=changes.get("options", {}))
        return explanation_cache_key(
            opts,
            opts.applied_params(),
            changes.get("image", b"pixels"),  # type: ignore[arg-type]
            changes.get("info", info),  # type: ignore[arg-type]
            changes.get("principal", alice),  # type: ignore[arg-type]
        )

    variants = [
        key(),
        key(image=b"pixels2"),
        key(principal=Principal(name="bob", scopes=frozenset({"explain"}))),
        key(info=info.model_copy(update={"sha256": "b" * 64})),
        key(options={"target": 1}),
        key(options={"methods": ["saliency"]}),
    ]
    assert len(set(variants)) == len(variants)
    assert key() == key()
    # Defaults written out or left implicit are the same request.
    explicit = options.model_copy(
        update={"params": {"gradcam": options.applied_params()["gradcam"]}}
    )
    assert (
        explanation_cache_key(explicit, explicit.applied_params(), b"pixels", info, alice) == key()
    )
