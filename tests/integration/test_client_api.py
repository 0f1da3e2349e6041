"""The Python client against real stacks: the demo stack, and a slow one with keys and limits."""

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import glimpse_client
import numpy as np
import pytest
import torch
from glimpse_client import AsyncClient, Client, Retry
from PIL import Image
from reliability_support import (  # type: ignore[import-not-found]
    build_repository,
    faulty_stack,
    wait_until,
)
from safetensors.torch import save_file
from slow_models import build_faulty_net  # type: ignore[import-not-found]

from service.auth import hash_key
from service.devstack import DevStack, free_port
from workers.demo.data import make_sample, to_png_bytes

ROOT = Path(__file__).resolve().parents[2]
MODEL = "demo-lesions"
WIDTH, HEIGHT = 160, 96


def lesion_image(seed: int = 7) -> Image.Image:
    """A demo lesion image, resized to a non-square shape so that rows and columns differ."""
    return Image.open(io.BytesIO(to_png_bytes(make_sample(seed).image))).resize((WIDTH, HEIGHT))


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture()
def glimpse(stack: DevStack) -> Iterator[Client]:
    with Client(stack.url) as client:
        yield client


def test_explains_a_path_bytes_a_pil_image_and_an_array_alike(
    glimpse: Client, tmp_path: Path
) -> None:
    image = lesion_image()
    path = tmp_path / "lesion.png"
    path.write_bytes(png(image))
    inputs: dict[str, glimpse_client.images.ImageInput] = {
        "path": path,
        "str path": str(path),
        "bytes": png(image),
        "pil": image,
        "array": np.asarray(image),
    }
    results = {
        kind: glimpse.explain(value, MODEL, ["gradcam", "saliency"])
        for kind, value in inputs.items()
    }
    reference = results["path"]
    for kind, result in results.items():
        assert result.model.id == MODEL, kind
        assert [e.method for e in result.explanations] == ["gradcam", "saliency"], kind
        assert result.predictions == reference.predictions, kind
        for explanation in result.explanations:
            assert explanation.map is not None and explanation.map.dtype == np.float32
            assert explanation.map.shape == (HEIGHT, WIDTH), kind
            assert explanation.overlay is not None and explanation.overlay.size == (WIDTH, HEIGHT)
            assert explanation.heatmap is None
            assert explanation.target.class_index == result.predictions[0].class_index
        assert result.raw["job_id"] == result.job_id
    assert len(reference.provenance.model_sha256) == 64
    assert reference.explanation("saliency").method == "saliency"


def test_base64_and_json_scores_decode_to_the_same_map(glimpse: Client) -> None:
    image = png(lesion_image(seed=12))
    packed = glimpse.explain(image, MODEL, "gradcam", output={"heatmap": True})
    listed = glimpse.explain(image, MODEL, "gradcam", output={"scores": "json"})
    packed_map = packed.explanations[0].map
    listed_map = listed.explanations[0].map
    assert packed.raw["explanations"][0]["scores"]["base64"]
    values = listed.raw["explanations"][0]["scores"]["values"]
    assert packed_map is not None and listed_map is not None
    np.testing.assert_array_equal(listed_map, np.asarray(values, dtype=np.float32))
    np.testing.assert_allclose(packed_map, listed_map, atol=1e-6)
    assert packed_map.max() == pytest.approx(packed.explanations[0].scores.max)  # type: ignore[union-attr]
    heatmap = packed.explanations[0].heatmap
    assert heatmap is not None and heatmap.size == (WIDTH, HEIGHT)


def test_evaluate_adds_typed_faithfulness_figures_to_each_map(glimpse: Client) -> None:
    image = lesion_image(seed=5)
    evaluated = glimpse.explain(image, MODEL, ["gradcam", "saliency"], evaluate=True)
    plain = glimpse.explain(image, MODEL, ["gradcam", "saliency"])
    for explanation, raw in zip(evaluated.explanations, evaluated.raw["explanations"], strict=True):
        figures = explanation.evaluation
        assert figures is not None, explanation.method
        assert figures.model_dump() == raw["evaluation"]
        assert 0 <= figures.deletion_auc <= 1 and 0 <= figures.insertion_auc <= 1
        assert -1 <= figures.top10_drop <= 1
    assert all(explanation.evaluation is None for explanation in plain.explanations)
    assert plain.raw["explanations"][0].get("evaluation") is None


def test_a_pooled_grid_and_a_class_list(glimpse: Client) -> None:
    result = glimpse.explain(
        lesion_image(seed=3), MODEL, "saliency", target=[0, 2], output={"grid": 8}
    )
    assert [e.target.class_index for e in result.explanations] == [0, 2]
    for explanation in result.explanations:
        assert explanation.map is not None and explanation.map.shape == (8, 8)
    assert result.explanation("saliency", 2).target.label == "mass"


def test_submit_wait_job_and_cancel_of_a_finished_job(glimpse: Client) -> None:
    accepted = glimpse.submit(lesion_image(seed=21), MODEL, ["gradcam"])
    assert accepted.status == "queued" and accepted.url.endswith(accepted.job_id)
    finished = glimpse.wait(accepted.job_id, timeout=60)
    assert finished.status == "succeeded"
    result = finished.result
    assert isinstance(result, glimpse_client.ExplainResult)
    assert result.job_id == accepted.job_id
    assert result.explanations[0].map is not None
    assert result.explanations[0].map.shape == (HEIGHT, WIDTH)
    assert glimpse.job(accepted.job_id).status == "succeeded"
    # Only a queued job can be cancelled; for a finished one the service answers 409.
    with pytest.raises(glimpse_client.Conflict) as refused:
        glimpse.cancel(accepted.job_id)
    assert refused.value.status == 409 and "succeeded" in (refused.value.detail or "")


def test_models_methods_and_a_visualization(glimpse: Client) -> None:
    models = {model.id: model for model in glimpse.models()}
    demo = models[MODEL]
    assert demo.labels == ["normal", "nodule", "mass"]
    assert demo.input is not None and (demo.input.height, demo.input.width) == (128, 128)
    assert "gradcam" in demo.methods and demo.live_workers >= 1
    assert glimpse.model(MODEL).sha256 == demo.sha256
    methods = {method.id: method for method in glimpse.methods()}
    assert {"gradcam", "saliency", "activation_max"} <= set(methods)
    assert "samples" in methods["smoothgrad"].parameters["properties"]

    picture = glimpse.visualize(MODEL, 1, steps=8, size=48, seed=3)
    assert picture.target.kind == "class" and picture.target.label == "nodule"
    assert picture.image.size == (48, 48)
    assert picture.probability is not None and 0 <= picture.probability <= 1


def test_problems_become_their_error_types(glimpse: Client) -> None:
    with pytest.raises(glimpse_client.NotFound) as unknown:
        glimpse.explain(lesion_image(), "no-such-model", "gradcam")
    assert unknown.value.status == 404 and "no-such-model" in unknown.value.detail
    assert unknown.value.type == "urn:glimpse:problem:not-found"

    with pytest.raises(glimpse_client.InvalidRequest) as invalid:
        glimpse.explain(lesion_image(), MODEL, "gradcam", target="top9")
    assert invalid.value.status == 422
    assert [error.loc for error in invalid.value.errors] == [["target"]]
    assert "top" in invalid.value.errors[0].msg

    with pytest.raises(glimpse_client.InvalidRequest) as unknown_method:
        glimpse.explain(lesion_image(), MODEL, "no_such_method")
    assert "no_such_method" in unknown_method.value.errors[0].msg

    with pytest.raises(glimpse_client.BadImage) as bad:
        glimpse.explain(b"\x89PNG\r\n\x1a\n" + b"not the rest of a PNG" * 4, MODEL)
    assert bad.value.status == 400 and bad.value.detail

    gif = io.BytesIO()
    lesion_image().save(gif, format="GIF")
    with pytest.raises(glimpse_client.UnsupportedMedia) as unsupported:
        glimpse.explain(gif.getvalue(), MODEL)
    assert unsupported.value.status == 415

    noise = np.random.default_rng(0).integers(0, 255, (2100, 2100), dtype=np.uint8)
    with pytest.raises(glimpse_client.TooLarge) as large:
        glimpse.explain(noise, MODEL)  # over the stack's 4 MiB body limit once base64-encoded
    assert large.value.status == 413

    with pytest.raises(glimpse_client.NotFound):
        glimpse.job("0123456789abcdef")


def test_an_async_client_explains_concurrently(stack: DevStack) -> None:
    async def explain_many() -> list[glimpse_client.ExplainResult]:
        async with AsyncClient(stack.url) as client:
            assert MODEL in {model.id for model in await client.models()}
            accepted = await client.submit(lesion_image(29), MODEL, "saliency")
            job = await client.wait(accepted.job_id, timeout=60)
            assert isinstance(job.result, glimpse_client.ExplainResult)
            images = [lesion_image(seed) for seed in range(30, 36)]
            return await asyncio.gather(*(client.explain(i, MODEL, "gradcam") for i in images))

    results = asyncio.run(explain_many())
    assert len({result.job_id for result in results}) == 6
    for result in results:
        assert result.explanations[0].map is not None
        assert result.explanations[0].map.shape == (HEIGHT, WIDTH)


def test_no_connection_is_unreachable_after_the_bounded_retries() -> None:
    started = time.monotonic()
    with (
        Client(f"http://127.0.0.1:{free_port()}", retry=Retry(attempts=2, backoff_s=0.1)) as dead,
        pytest.raises(glimpse_client.Unreachable) as unreachable,
    ):
        dead.models()
    assert unreachable.value.status is None
    assert time.monotonic() - started < 5


def readme_client_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python client") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Python client section has no python code block"
    return match.group(1)


def test_the_readme_client_example_runs(stack: DevStack, tmp_path: Path) -> None:
    (tmp_path / "lesion.png").write_bytes(to_png_bytes(make_sample(3).image))
    ran = subprocess.run(
        [sys.executable, "-c", readme_client_example()],
        cwd=tmp_path,
        env={**subprocess_env(), "GLIMPSE_URL": stack.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip()
    for method in ("gradcam", "saliency"):
        assert Image.open(tmp_path / f"{method}.png").size == (128, 128)


def subprocess_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "GLIMPSE_API_KEY"}


# A stack with keys on, a queue limit and a model that takes a second per pass.

SLUGGISH_DELAY_S = 2.0
KEYS = {
    "alice": {"scopes": ["explain"]},
    "bob": {"scopes": ["explain"]},
    "limited": {"scopes": ["explain"], "rate_limit_per_minute": 2},
    "ops": {"scopes": ["admin"]},
}


def add_sluggish_model(repository: Path) -> None:
    folder = repository / "sluggish" / "1"
    folder.mkdir(parents=True)
    kwargs = {"delay_s": SLUGGISH_DELAY_S}
    torch.manual_seed(0)
    save_file(build_faulty_net(**kwargs).state_dict(), str(folder / "model.safetensors"))
    manifest = json.loads((repository / "slow" / "1" / "manifest.json").read_text())
    manifest.update(id="sluggish", architecture={"factory": manifest["architecture"]["factory"]})
    manifest["architecture"]["kwargs"] = kwargs
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    root = tmp_path_factory.mktemp("client-secured")
    keys_file = root / "keys.json"
    entries = [{"name": n, "sha256": hash_key(f"{n}-secret"), **v} for n, v in KEYS.items()]
    keys_file.write_text(json.dumps({"keys": entries}))
    repository = build_repository(root / "models")
    add_sluggish_model(repository)
    with faulty_stack(
        repository,
        root / "logs",
        GLIMPSE_AUTH="on",
        GLIMPSE_API_KEYS_FILE=str(keys_file),
        GLIMPSE_QUEUE_LIMIT="2",
        GLIMPSE_MAX_BATCH="1",
        GLIMPSE_RETRY_AFTER_S="1",
    ) as running:
        yield running


def client_of(stack: DevStack, who: str, retry: Retry | None = None) -> Client:
    return Client(stack.url, f"{who}-secret", retry=retry)


@pytest.fixture()
def alice(secured: DevStack) -> Iterator[Client]:
    with client_of(secured, "alice") as client:
        assert wait_until(lambda: client.model("sluggish").queued == 0, timeout_s=30)
        yield client


def test_keys_are_sent_and_refusals_are_typed(secured: DevStack, alice: Client) -> None:
    assert {model.id for model in alice.models()} >= {"slow", "fast", "sluggish"}
    with (
        Client(secured.url, api_key="") as anonymous,
        pytest.raises(glimpse_client.Unauthenticated),
    ):
        anonymous.models()
    with client_of(secured, "mallory") as stranger, pytest.raises(glimpse_client.Unauthenticated):
        stranger.models()
    with client_of(secured, "ops") as ops, pytest.raises(glimpse_client.Forbidden) as forbidden:
        ops.explain(small_image(1), "fast")
    assert forbidden.value.status == 403 and "explain" in forbidden.value.detail

    job_id = alice.submit(small_image(40), "fast").job_id
    with client_of(secured, "bob") as bob, pytest.raises(glimpse_client.NotFound):
        bob.job(job_id)
    assert alice.wait(job_id, timeout=30).status == "succeeded"


def small_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (32, 32), dtype=np.uint8)


def test_a_queued_job_is_cancelled(alice: Client) -> None:
    running = alice.submit(small_image(1), "sluggish").job_id
    queued = alice.submit(small_image(2), "sluggish").job_id
    cancelled = alice.cancel(queued)
    assert cancelled.status == "cancelled" and cancelled.job_id == queued
    assert alice.wait(queued, timeout=5).status == "cancelled"
    finished = alice.wait(running, timeout=60)
    assert finished.status == "succeeded" and finished.result is not None


def test_a_sync_timeout_carries_the_job_to_wait_for(alice: Client) -> None:
    started = time.monotonic()
    with pytest.raises(glimpse_client.Timeout) as late:
        alice.explain(small_image(3), "sluggish", "gradcam", timeout=0.2)
    assert time.monotonic() - started < SLUGGISH_DELAY_S * 3
    assert late.value.status == 504 and late.value.job_id
    with pytest.raises(glimpse_client.Timeout) as still:
        alice.wait(late.value.job_id, timeout=0.05)
    assert still.value.status is None and still.value.job_id == late.value.job_id
    finished = alice.wait(late.value.job_id, timeout=60)
    assert isinstance(finished.result, glimpse_client.ExplainResult)
    assert finished.result.explanations[0].map is not None


def test_a_failed_job_raises_job_failed(alice: Client) -> None:
    white = np.full((32, 32), 255, np.uint8)  # the faulty model raises on a white image
    with pytest.raises(glimpse_client.ServerError) as sync:
        alice.explain(white, "fast")
    assert sync.value.status == 500 and sync.value.type.endswith("attribution-failed")

    job_id = alice.submit(white, "fast", "saliency").job_id
    with pytest.raises(glimpse_client.JobFailed) as failed:
        alice.wait(job_id, timeout=30)
    assert failed.value.job_id == job_id and failed.value.status == 500
    assert isinstance(failed.value.cause, glimpse_client.ServerError)
    assert failed.value.detail


def fill_queue(client: Client, seed: int) -> list[str]:
    """Two sluggish jobs: the model's queue (limit 2) stays full while the first one runs.
    Images of their own: an identical request would be answered from the result cache."""
    return [client.submit(small_image(seed + n), "sluggish").job_id for n in range(2)]


def test_a_full_queue_is_retried_after_retry_after_until_it_gives_up(
    secured: DevStack, alice: Client, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = fill_queue(alice, seed=100)
    caplog.set_level(logging.INFO, logger="glimpse_client")
    started = time.monotonic()
    with (
        client_of(secured, "bob", Retry(attempts=1)) as bob,
        pytest.raises(glimpse_client.QueueFull) as full,
    ):
        bob.explain(small_image(20), "sluggish")
    elapsed = time.monotonic() - started
    assert full.value.status == 429 and full.value.retry_after == 1
    retries = [r.getMessage() for r in caplog.records if r.name == "glimpse_client"]
    assert retries == ["429 on POST /v1/explanations; retry 1/1 in 1.00 s"]
    assert 1.0 <= elapsed < SLUGGISH_DELAY_S
    for job_id in jobs:
        alice.wait(job_id, timeout=60)


def test_a_full_queue_is_retried_until_the_call_succeeds(
    secured: DevStack, alice: Client, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = fill_queue(alice, seed=200)
    caplog.set_level(logging.INFO, logger="glimpse_client")
    with client_of(secured, "bob", Retry(attempts=20)) as bob:
        result = bob.explain(small_image(21), "sluggish", timeout=60)
    assert result.explanations[0].map is not None
    retries = [r.getMessage() for r in caplog.records if r.name == "glimpse_client"]
    assert retries and all(message.endswith("in 1.00 s") for message in retries)
    for job_id in jobs:
        assert alice.wait(job_id, timeout=60).status == "succeeded"


def test_a_rate_limit_longer_than_the_retry_budget_raises_at_once(secured: DevStack) -> None:
    with client_of(secured, "limited", Retry(attempts=3, max_wait_s=5)) as limited:
        for seed in range(2):
            limited.explain(small_image(30 + seed), "fast")
        started = time.monotonic()
        with pytest.raises(glimpse_client.RateLimited) as refused:
            limited.explain(small_image(32), "fast")
    assert time.monotonic() - started < 2
    assert refused.value.status == 429 and refused.value.retry_after is not None
    assert 5 < refused.value.retry_after <= 60
    assert "2 explain requests a minute" in refused.value.detail
