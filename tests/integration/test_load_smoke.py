"""A 20-second smoke run of the locust load test (`bench/locustfile.py`, as `bench/load.py` runs
it) against a real stack: a private Redis, the uvicorn gateway with API keys on and a queue limit
of 2, and one worker process, warmed with one request of each kind of the mix first."""

from collections.abc import Iterator

import pytest

from bench.load import LoadRun, LoadShape, run_locust, secured_stack, warm
from bench.load_mix import ADMITTED, REFUSED

QUEUE_LIMIT = 2
# Back-to-back users, many more than the queue holds: whatever the machine's speed, two of them
# keep the queue nearly always full, and the others find it so. Refused users wait the 429's
# Retry-After, as a client should, so the refusals stay a few per second.
USERS = 12
SECONDS = 20
RETRY_AFTER_S = 2  # the gateway's default GLIMPSE_RETRY_AFTER_S

# A refusal never waits for a worker: the gateway reads and checks the body (at most ~180 KB,
# the DICOM of the mix) and runs one Redis script that finds the queue full. That is well under
# 10 ms of its CPU (bench/gateway.py admits ~1,000 small requests per CPU-second). At worst all
# USERS requests reach it at once, so one waits behind 12 × 10 ms = 120 ms of work; with the
# gateway getting even an eighth of a core on a shared 2-core machine (worker threads, Redis,
# locust and other work runnable beside it), that is under 1 s. A 429 that waited for room in
# the queue, or for the 30 s sync timeout, would take longer.
REFUSAL_BOUND_MS = USERS * 10.0 * 8


@pytest.fixture(scope="module")
def load_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadRun]:
    root = tmp_path_factory.mktemp("load-smoke")
    stack, key = secured_stack(root, workers=1, queue_limit=QUEUE_LIMIT, device="cpu")
    with stack.serving():
        warm(stack.url, key)  # the first request of a kind takes cold paths, as bench/load.py
        yield run_locust(
            stack.url,
            LoadShape(
                users=USERS,
                spawn_rate=100 * USERS,  # all at once
                seconds=SECONDS,
                pacing=0,
                retry_after=True,
            ),
            csv_prefix=root / "smoke",
            api_key=key,
        )


def describe(run: LoadRun) -> str:
    outcomes = {name: (o.requests, o.failures, o.p99) for name, o in run.outcomes.items()}
    return f"outcomes (requests, failures, p99 ms): {outcomes}; failures: {run.failures}"


def test_requests_were_admitted_with_valid_bodies_and_no_errors(load_run: LoadRun) -> None:
    admitted = load_run.admitted
    assert admitted is not None and admitted.requests > 0, describe(load_run)
    # The locustfile fails a 2xx whose body is not a valid ExplainResponse with the map asked
    # for, a 429 without Retry-After, any other status (a 5xx among them) and a lost answer.
    assert load_run.errors == 0, describe(load_run)
    assert set(load_run.outcomes) <= {ADMITTED, REFUSED}, describe(load_run)


def test_a_full_queue_answers_429_at_once(load_run: LoadRun) -> None:
    refused = load_run.refused
    assert refused is not None and refused.requests > 0, describe(load_run)
    assert refused.p99 < REFUSAL_BOUND_MS, describe(load_run)


def test_refused_users_kept_the_retry_after(load_run: LoadRun) -> None:
    # Each user is refused at most once per Retry-After, plus once for a refusal in hand.
    refused = load_run.refused
    assert refused is not None, describe(load_run)
    assert refused.requests <= USERS * (SECONDS // RETRY_AFTER_S + 1), describe(load_run)
