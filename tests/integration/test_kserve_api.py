"""KServe's v1 explain protocol on the real stack: `POST /v1/models/{id}:explain`.

The request shapes are those KServe clients send: instances as objects whose image is a plain
base64 string, TensorFlow Serving's `{"b64": …}`, or TorchServe's `data`; the body as the `kserve`
SDK's `InferenceRESTClient.explain` sends it (compact JSON, `content-type: application/json`, to
`{base}/v1/models/{name}:explain`; it reads any 2xx body as JSON) and as `curl -d @body.json`
sends it (form-urlencoded). The SDK itself pulls in Kubernetes, gRPC and pandas, too much for a
test dependency, so these are its exact bytes and headers instead.
"""

import base64
import json

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from schemas import keys
from schemas.kserve import MAX_INSTANCES
from workers.demo.data import make_sample, to_png_bytes

MODEL = "demo-lesions"
EXPLAIN = f"/v1/models/{MODEL}:explain"


def lesion_b64(seed: int) -> str:
    return base64.b64encode(to_png_bytes(make_sample(seed).image)).decode()


def images_of_distinct_classes() -> list[str]:
    """Three images, one of each class the generator draws, so that order shows in the answer."""
    found: dict[int, str] = {}
    for seed in range(100, 200):
        sample = make_sample(seed)
        found.setdefault(sample.label, base64.b64encode(to_png_bytes(sample.image)).decode())
        if len(found) == 3:
            return [found[label] for label in sorted(found)]
    raise AssertionError("the generator drew fewer than three classes")


def sdk_post(client: httpx.Client, path: str, data: dict[str, object]) -> httpx.Response:
    """What `kserve.InferenceRESTClient.explain` sends: orjson's compact bytes, JSON header."""
    return client.post(
        path,
        content=json.dumps(data, separators=(",", ":")).encode(),
        headers={"content-type": "application/json"},
        timeout=120,
    )


def last_queued(redis_url: str) -> bytes | None:
    """The id of the newest entry ever added to the model's stream (entries leave when done)."""
    stream = keys.job_stream(MODEL)
    with redis.Redis.from_url(redis_url) as connection:
        if not connection.exists(stream):
            return None
        info: dict[str, bytes] = connection.xinfo_stream(stream)
        return info["last-generated-id"]


def test_each_instance_is_explained_in_order_as_the_explain_route_does(
    client: httpx.Client,
) -> None:
    images = images_of_distinct_classes()
    instances = [
        {"image": images[0]},
        {"image": {"b64": images[1]}, "target": 0},
        {"data": images[2]},
    ]
    parameters = {"methods": ["gradcam", "saliency"], "output": {"grid": 4}}
    answer = sdk_post(client, EXPLAIN, {"instances": instances, "parameters": parameters})

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    result = json.loads(answer.content)
    assert len(result["predictions"]) == len(result["explanations"]) == 3
    assert len(result["job_ids"]) == len(set(result["job_ids"])) == 3
    assert result["model"]["id"] == MODEL
    for index, image in enumerate(images):
        target = instances[index].get("target", "top1")
        alone = client.post(
            "/v1/explanations",
            json={"model": MODEL, "image": image, "target": target, **parameters},
        )
        assert alone.status_code == 200, alone.text
        expected = alone.json()
        predictions = result["predictions"][index]
        assert [p["class_index"] for p in predictions] == [
            p["class_index"] for p in expected["predictions"]
        ]
        for ours, theirs in zip(predictions, expected["predictions"], strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
            assert ours["logit"] == pytest.approx(theirs["logit"], abs=1e-4)
        explanations = result["explanations"][index]
        assert [(e["method"], e["target"]) for e in explanations] == [
            (e["method"], e["target"]) for e in expected["explanations"]
        ]
        assert all(e["scores"]["shape"] == [4, 4] for e in explanations)
    # Each image's own top class leads its predictions: three classes, three different leaders.
    assert len({p[0]["class_index"] for p in result["predictions"]}) == 3
    assert result["explanations"][1][0]["target"]["class_index"] == 0


def test_a_curl_body_and_no_parameters_get_the_defaults(client: httpx.Client) -> None:
    answer = client.post(
        EXPLAIN,
        content=json.dumps({"instances": [{"image": lesion_b64(3)}]}).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200, answer.text
    (explanations,) = answer.json()["explanations"]
    assert [e["method"] for e in explanations] == ["gradcam"]
    assert explanations[0]["overlay_png"]


def test_the_instances_of_a_request_are_computed_as_one_batch(client: httpx.Client) -> None:
    def batch_sizes() -> tuple[float, float]:
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
        }
        labels = (("model", MODEL),)
        return (
            samples.get(("glimpse_batch_size_count", labels), 0.0),
            samples.get(("glimpse_batch_size_sum", labels), 0.0),
        )

    # Images no earlier test sent, so that none is answered from the result cache.
    instances = [{"image": lesion_b64(seed)} for seed in (401, 402, 403, 404)]
    batches, jobs = batch_sizes()
    answer = sdk_post(client, EXPLAIN, {"instances": instances})
    assert answer.status_code == 200, answer.text
    after_batches, after_jobs = batch_sizes()
    assert (after_batches - batches, after_jobs - jobs) == (1, 4)


def test_routes_with_and_without_the_colon_stay_apart(client: httpx.Client) -> None:
    info = client.get(f"/v1/models/{MODEL}")
    assert info.status_code == 200 and info.json()["id"] == MODEL
    # The model route has no POST; the explain route has no GET.
    assert client.post(f"/v1/models/{MODEL}", json={}).status_code == 405
    wrong_verb = client.get(EXPLAIN)
    assert wrong_verb.status_code == 404
    assert wrong_verb.headers["content-type"] == "application/problem+json"
    unknown = sdk_post(client, "/v1/models/nothing:explain", {"instances": [{"image": "aGk="}]})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert "nothing" in unknown.json()["detail"]


@pytest.mark.parametrize(
    ("instances", "status", "detail", "loc"),
    [
        ([{"image": "not base64!"}], 400, "instances[1]: ", None),
        ([{"target": 1}], 422, "instances[1].image: ", ["instances", 1, "image"]),
        ([{"image": {"b64": ""}}], 422, "instances[1].image", ["instances", 1, "image"]),
        ([{"image": "aGVsbG8="}], 415, "instances[1]: ", None),
        ([{"image": None, "target": 7}], 422, "instances[1].image", ["instances", 1, "image"]),
        ([{"image": "", "extra": 1}], 422, "instances[1]", ["instances", 1]),
        ([{"image": lesion_b64(5), "target": 7}], 422, "instances[1]: Class index 7", None),
        ([{"image": lesion_b64(5), "target": -1}], 422, "instances[1].target", None),
    ],
)
def test_a_bad_instance_is_named_and_nothing_is_queued(  # noqa: PLR0913 - 2 fixtures, 4 params
    client: httpx.Client,
    redis_url: str,
    instances: list[dict[str, object]],
    status: int,
    detail: str,
    loc: list[object] | None,
) -> None:
    before = last_queued(redis_url)
    body = {"instances": [{"image": lesion_b64(6)}, *instances]}
    answer = sdk_post(client, EXPLAIN, body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status
    assert problem["detail"].startswith(detail), problem["detail"]
    if loc is not None:
        assert any(error["loc"][: len(loc)] == loc for error in problem["errors"]), problem
    assert last_queued(redis_url) == before


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"instances": []}, "instances: "),
        ({"instances": [{"image": "aGk="}] * (MAX_INSTANCES + 1)}, "instances: "),
        ({"instances": [{"image": "aGk="}], "parameters": {"methods": ["nope"]}}, "parameters"),
        ({"instances": [{"image": "aGk="}], "parameters": {"model": MODEL}}, "parameters.model"),
        ({"images": ["aGk="]}, "instances: "),
    ],
)
def test_bad_shapes_are_refused(client: httpx.Client, body: dict[str, object], detail: str) -> None:
    answer = sdk_post(client, EXPLAIN, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(detail), answer.json()["detail"]


def test_other_media_types_are_refused(client: httpx.Client) -> None:
    answer = client.post(EXPLAIN, files={"image": ("scan.png", b"\x89PNG", "image/png")})
    assert answer.status_code == 415
    assert answer.headers["content-type"] == "application/problem+json"


def test_a_retry_with_the_same_idempotency_key_gets_the_first_jobs(
    client: httpx.Client, redis_url: str
) -> None:
    body = {"instances": [{"image": lesion_b64(seed)} for seed in (601, 602)]}
    headers = {"Idempotency-Key": "kserve-batch-1"}
    first = client.post(f"{EXPLAIN}?timeout=120", json=body, headers=headers, timeout=150)
    queued_after_first = last_queued(redis_url)
    again = client.post(f"{EXPLAIN}?timeout=120", json=body, headers=headers, timeout=150)
    other = client.post(
        EXPLAIN, json={"instances": body["instances"][:1]}, headers=headers, timeout=120
    )

    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["job_ids"] == first.json()["job_ids"]
    assert again.json()["explanations"] == first.json()["explanations"]
    assert last_queued(redis_url) == queued_after_first, "nothing queued again"
    assert other.status_code == 422, other.text


def test_a_wait_that_runs_out_names_every_unfinished_job(client: httpx.Client) -> None:
    slow = {"methods": ["integrated_gradients"], "params": {"integrated_gradients": {"steps": 512}}}
    instances = [{"image": lesion_b64(seed)} for seed in (501, 502)]
    answer = client.post(
        f"{EXPLAIN}?timeout=0.1", json={"instances": instances, "parameters": slow}
    )
    assert answer.status_code == 504, answer.text
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    assert len(problem["job_ids"]) >= 1 and problem["job_id"] == problem["job_ids"][0]
    for job_id in problem["job_ids"]:
        job = client.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200 and job.json()["model"] == MODEL
