"""Every job the gateway accepts reaches a terminal state: on the real stack, hostile numbers for
every method's parameters (and the visualization's) are refused at admission with 422, and the
extreme values still admitted, at the bounds the schema publishes, end succeeded or failed with
a 4xx problem in bounded time, never 500 and never left queued."""

import base64
import json
import time

import httpx
import pytest
from parameter_sweep import (  # type: ignore[import-not-found]
    ACTIVATION_MAX,
    HOSTILE,
    NumericParameter,
    numeric_parameters,
)

from schemas import problems
from schemas.methods import MAX_SEED
from schemas.methods.lrp import MAX_LRP_ALPHA, MAX_LRP_EPSILON
from schemas.visualizations import MAX_REGULARISER_WEIGHT
from workers.demo.data import make_sample, to_png_bytes

MODEL = "demo-lesions"
IMAGE = base64.b64encode(to_png_bytes(make_sample(5).image)).decode()
TERMINAL_S = 60
# Costly only by their count of passes, which these keep small: the bounds themselves are cheap.
CHEAP = {
    "smoothgrad": {"samples": 1},
    "integrated_gradients": {"steps": 2, "max_steps": 2},
    "rise": {"masks": 2},
    "occlusion": {"window": 512, "stride": 512},
}
ADMITTED_EXTREMES = [
    ("smoothgrad", {"seed": MAX_SEED, "noise": 1.0}),
    ("smoothgrad", {"seed": 0, "noise": 0.0, "base": "integrated_gradients"}),
    ("integrated_gradients", {"seed": MAX_SEED, "baseline": "uniform", "tolerance": 0.0}),
    ("deeplift", {"seed": MAX_SEED, "baseline": "uniform"}),
    ("rise", {"seed": MAX_SEED, "p": 5e-324, "cell": 64}),
    ("rise", {"p": 0.9999999999999999, "cell": 2, "batch_size": 1024}),
    ("lrp", {"composite": "alpha_beta", "epsilon": MAX_LRP_EPSILON, "alpha": MAX_LRP_ALPHA}),
    ("lrp", {"composite": "epsilon", "epsilon": 0.0, "first_layer": "flat"}),
    ("occlusion", {"batch_size": 1024}),
    ("scorecam", {"batch_size": 256}),
]
VISUALIZATION_EXTREMES = [
    {"target": 0, "seed": MAX_SEED, "tv": MAX_REGULARISER_WEIGHT, "l2": MAX_REGULARISER_WEIGHT},
    {"target": 0, "lr": 1.0, "rotate": 180.0, "jitter": 64, "scale": [0.25, 4.0], "size": 16},
    {"layer": "features.14", "channel": 2**31 - 1},
    {"target": 2**31 - 1},
]


def explain_body(method: str, params: str) -> str:
    """A job request as JSON text, with the method's parameters already JSON text."""
    placeholder = "__params__"
    body = {"model": MODEL, "image": IMAGE, "methods": [method], "params": {method: placeholder}}
    return json.dumps(body).replace(json.dumps(placeholder), params)


def submit(client: httpx.Client, parameter: NumericParameter, value: str) -> httpx.Response:
    params = parameter.params_json(value)
    headers = {"Content-Type": "application/json"}
    if parameter.method == ACTIVATION_MAX:
        return client.post(
            f"/v1/models/{MODEL}/visualizations",
            content=params,
            headers={**headers, "Prefer": "respond-async"},
        )
    return client.post("/v1/jobs", content=explain_body(parameter.method, params), headers=headers)


def test_hostile_numbers_are_refused_at_admission(client: httpx.Client) -> None:
    admitted = []
    for parameter in numeric_parameters():
        for value in HOSTILE:
            answer = submit(client, parameter, value)
            if answer.status_code != 422:
                admitted.append(f"{parameter} = {value}: {answer.status_code}")
                continue
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["type"] == problems.INVALID_REQUEST.type
    assert admitted == []


def outcome(client: httpx.Client, job_url: str) -> dict[str, object]:
    deadline = time.monotonic() + TERMINAL_S
    while time.monotonic() < deadline:
        status = client.get(job_url).json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return dict(status)
        time.sleep(0.1)
    pytest.fail(f"{job_url} is still {status['status']} after {TERMINAL_S} s")


def assert_ends_as_the_clients_own(client: httpx.Client, answer: httpx.Response) -> None:
    """Refused at admission (422), or accepted and then succeeded or failed with the client's own
    problem: never a 500, never left queued."""
    if answer.status_code == 422:
        assert answer.headers["content-type"].startswith("application/problem+json")
        return
    assert answer.status_code == 202, answer.text
    status = outcome(client, answer.json()["url"])
    assert status["status"] in ("succeeded", "failed"), status
    if status["status"] == "failed":
        error = status["error"]
        assert isinstance(error, dict) and 400 <= error["status"] < 500, error


@pytest.mark.parametrize(("method", "params"), ADMITTED_EXTREMES, ids=str)
def test_admitted_extremes_end_in_bounded_time(
    client: httpx.Client, method: str, params: dict[str, object]
) -> None:
    body = explain_body(method, json.dumps({**CHEAP.get(method, {}), **params}))
    answer = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert_ends_as_the_clients_own(client, answer)


@pytest.mark.parametrize("params", VISUALIZATION_EXTREMES, ids=str)
def test_admitted_visualization_extremes_end_in_bounded_time(
    client: httpx.Client, params: dict[str, object]
) -> None:
    answer = client.post(
        f"/v1/models/{MODEL}/visualizations",
        json={"steps": 2, **params},
        headers={"Prefer": "respond-async"},
    )
    assert_ends_as_the_clients_own(client, answer)
