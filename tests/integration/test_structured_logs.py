"""The logs of a real stack: every line of the gateway and of the worker is a JSON object, and
one request id leads from the gateway's access and admission lines to the worker's line for
each of its jobs and to the result's `timings`."""

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from log_lines import log_lines  # type: ignore[import-not-found]
from reliability_support import (  # type: ignore[import-not-found]
    build_repository,
    faulty_stack,
    image_b64,
    wait_for,
    wait_until,
)

from service.devstack import DevStack


@dataclass(frozen=True)
class Run:
    """What the requests of one stack's life returned, and every line it logged."""

    answers: dict[str, httpx.Response]
    job_ids: dict[str, list[str]]
    lines: dict[str, list[dict[str, object]]]


def worker_lines_for(stack: DevStack, job_ids: list[str]) -> bool:
    """Whether the worker's log has a finished line for each of `job_ids` yet."""
    assert stack.log_dir is not None
    text = (stack.log_dir / "worker-0.log").read_text()
    return all(f'"job_id": "{job_id}"' in text for job_id in job_ids)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("structured-logs")
    logs = root / "logs"
    answers: dict[str, httpx.Response] = {}
    job_ids: dict[str, list[str]] = {}
    with (
        faulty_stack(build_repository(root / "models"), logs, GLIMPSE_ACCESS_LOG="on") as stack,
        httpx.Client(base_url=stack.url, timeout=60) as client,
    ):

        def send(
            request_id: str, method: str, path: str, body: object = None, **headers: str
        ) -> httpx.Response:
            headers["X-Request-ID"] = request_id
            answer = client.request(method, path, headers=headers, json=body)
            answers[request_id] = answer
            return answer

        body = {"model": "fast", "image": image_b64(1), "methods": ["gradcam", "saliency"]}
        sync = send("trace-sync-1", "POST", "/v1/explanations", body)
        job_ids["trace-sync-1"] = [sync.json()["job_id"]]
        send("trace-cached-2", "POST", "/v1/explanations", body)
        kserve = send(
            "trace-kserve-4",
            "POST",
            "/v1/models/fast:explain",
            {"instances": [{"image": image_b64(3)}, {"image": image_b64(4)}]},
        )
        job_ids["trace-kserve-4"] = kserve.json()["job_ids"]
        polled = {
            "trace-async-3": ("/v1/jobs", {"model": "fast", "image": image_b64(2)}),
            "trace-failed-5": ("/v1/jobs", {"model": "fast", "image": image_b64(5, white=True)}),
            "trace-visualize-6": ("/v1/models/fast/visualizations", {"target": 1, "steps": 4}),
        }
        for request_id, (path, request) in polled.items():
            queued = send(request_id, "POST", path, request, Prefer="respond-async")
            job_ids[request_id] = [queued.json()["job_id"]]
        send("trace-missing-7", "GET", "/v1/jobs/no-such-job")

        finished = wait_for(client, [job_ids[request_id][0] for request_id in polled])
        assert len(finished) == len(polled)
        for request_id in polled:
            answers[f"{request_id}:status"] = client.get(f"/v1/jobs/{job_ids[request_id][0]}")
        everything = [job_id for ids in job_ids.values() for job_id in ids]
        assert wait_until(lambda: worker_lines_for(stack, everything), timeout_s=30)
    # Read once the stack has stopped: its shutdown lines are in too.
    yield Run(answers, job_ids, log_lines(logs))


def lines_of(run: Run, process: str, **fields: object) -> list[dict[str, object]]:
    return [
        line
        for line in run.lines[process]
        if all(line.get(name) == value for name, value in fields.items())
    ]


def test_every_line_of_the_gateway_and_the_worker_is_a_json_object(run: Run) -> None:
    assert sorted(run.lines) == ["gateway", "worker-0"]
    gateway, worker = run.lines["gateway"], run.lines["worker-0"]
    assert {"uvicorn.error", "glimpse.access", "glimpse.gateway"} <= {
        line["logger"] for line in gateway
    }
    assert {line["logger"] for line in worker} >= {"glimpse.worker"}
    assert {line["level"] for line in gateway + worker} <= {"INFO", "WARNING", "ERROR"}
    # The failed job's traceback is part of its line, not lines of its own.
    (traceback,) = lines_of(run, "worker-0", level="ERROR")
    assert "simulated failure on a poisoned image" in str(traceback["exception"])


@pytest.mark.parametrize(
    ("request_id", "path", "status"),
    [
        ("trace-sync-1", "/v1/explanations", 200),
        ("trace-async-3", "/v1/jobs", 202),
        ("trace-kserve-4", "/v1/models/fast:explain", 200),
        ("trace-visualize-6", "/v1/models/fast/visualizations", 202),
        ("trace-missing-7", "/v1/jobs/no-such-job", 404),
    ],
)
def test_the_access_line_and_the_answer_carry_the_request_id(
    run: Run, request_id: str, path: str, status: int
) -> None:
    answer = run.answers[request_id]
    assert answer.status_code == status
    assert answer.headers["x-request-id"] == request_id

    (access,) = lines_of(run, "gateway", logger="glimpse.access", request_id=request_id)
    assert (access["path"], access["status"]) == (path, status)
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] > 0


@pytest.mark.parametrize(
    ("request_id", "methods", "status"),
    [
        ("trace-sync-1", ["gradcam", "saliency"], "succeeded"),
        ("trace-async-3", ["gradcam"], "succeeded"),
        ("trace-kserve-4", ["gradcam"], "succeeded"),
        ("trace-failed-5", ["gradcam"], "failed"),
        ("trace-visualize-6", ["activation_max"], "succeeded"),
    ],
)
def test_one_request_id_leads_from_admission_to_the_workers_line(
    run: Run, request_id: str, methods: list[str], status: str
) -> None:
    for job_id in run.job_ids[request_id]:
        (admitted,) = lines_of(run, "gateway", logger="glimpse.gateway", job_id=job_id)
        assert admitted["request_id"] == request_id
        assert (admitted["model"], admitted["methods"], admitted["status"]) == (
            "fast",
            methods,
            "queued",
        )

        (finished,) = lines_of(run, "worker-0", job_id=job_id, status=status)
        assert finished["request_id"] == request_id
        assert (finished["model"], finished["methods"]) == ("fast", methods)
        if status == "failed":
            assert finished["problem"] == "attribution-failed"
            assert "timings" not in finished
        else:
            timings = finished["timings"]
            assert isinstance(timings, dict) and timings
            assert all(isinstance(value, float) and value >= 0 for value in timings.values())


def test_the_results_timings_name_the_request(run: Run) -> None:
    sync = run.answers["trace-sync-1"].json()
    assert sync["timings"]["request_id"] == "trace-sync-1"
    (finished,) = lines_of(run, "worker-0", job_id=sync["job_id"])
    timings = finished["timings"]
    assert isinstance(timings, dict)
    assert timings == {k: v for k, v in sync["timings"].items() if k != "request_id"}

    polled = run.answers["trace-async-3:status"].json()
    assert polled["result"]["timings"]["request_id"] == "trace-async-3"


def test_a_cached_answer_names_the_request_it_answers(run: Run) -> None:
    cached = run.answers["trace-cached-2"]
    assert cached.status_code == 200 and cached.json()["cached"] is True
    assert cached.json()["timings"]["request_id"] == "trace-cached-2"

    job_id = cached.json()["job_id"]
    (admitted,) = lines_of(run, "gateway", job_id=job_id)
    assert (admitted["request_id"], admitted["status"]) == ("trace-cached-2", "cached")
    assert lines_of(run, "worker-0", job_id=job_id) == []
