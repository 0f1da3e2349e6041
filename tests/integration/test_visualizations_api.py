"""Activation maximisation through the API: the image, the cache, and bad targets."""

import base64
import io
import signal
import time

import httpx
from PIL import Image

from service.devstack import DevStack

STEPS = 8


def visualize(client: httpx.Client, model: str, **fields: object) -> httpx.Response:
    return client.post(
        f"/v1/models/{model}/visualizations?timeout=120", json={"steps": STEPS, **fields}
    )


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_demo_model_class_visualization_and_its_cache(
    client: httpx.Client, stack: DevStack
) -> None:
    answer = visualize(client, "demo-lesions", target=2, seed=3)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    image = decode_png(result["image_png"])
    assert image.size == (128, 128) and image.mode == "L"
    assert result["target"] == {"kind": "class", "class_index": 2, "label": "mass"}
    assert 0 <= result["probability"] <= 1
    assert result["provenance"]["params"]["seed"] == 3
    assert result["provenance"]["params"]["steps"] == STEPS

    worker = stack.processes[0]
    worker.send_signal(signal.SIGSTOP)  # a cached answer must not need a worker
    try:
        started = time.monotonic()
        again = visualize(client, "demo-lesions", target=2, seed=3)
        assert again.status_code == 200
        assert time.monotonic() - started < 2
        assert again.content == answer.content
    finally:
        worker.send_signal(signal.SIGCONT)


def test_resnet50_gets_an_rgb_image_of_its_size_and_layers_work(client: httpx.Client) -> None:
    answer = visualize(client, "resnet50", target=3, steps=8)
    assert answer.status_code == 200, answer.text
    image = decode_png(answer.json()["image_png"])
    assert image.mode == "RGB" and image.size == (64, 64)

    channel = visualize(client, "demo-lesions", layer="features.14", channel=5, steps=8)
    assert channel.status_code == 200, channel.text
    assert channel.json()["target"] == {"kind": "channel", "layer": "features.14", "channel": 5}
    assert channel.json()["probability"] is None


def test_async_visualization_is_a_job(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/models/demo-lesions/visualizations",
        json={"target": 0, "steps": 8, "seed": 11},
        headers={"Prefer": "respond-async"},
    )
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = client.get(answer.json()["url"]).json()
        if status["status"] == "succeeded":
            break
        time.sleep(0.1)
    assert status["status"] == "succeeded"
    assert decode_png(status["result"]["image_png"]).size == (128, 128)


def test_bad_visualization_requests(client: httpx.Client) -> None:
    out_of_range = visualize(client, "demo-lesions", target=3)
    assert out_of_range.status_code == 422
    assert "out of range" in out_of_range.json()["detail"]
    assert (
        visualize(client, "demo-lesions", target=1, layer="features.14", channel=0).status_code
        == 422
    )
    assert visualize(client, "demo-lesions").status_code == 422
    assert visualize(client, "nope", target=0).status_code == 404
    unknown_layer = visualize(client, "demo-lesions", layer="no.such.layer", channel=0, steps=4)
    assert unknown_layer.status_code == 422, unknown_layer.text
    assert "activation_max" in {m["id"] for m in client.get("/v1/methods").json()}
