"""No single request holds up the gateway: a hostile body is refused at once, and `/healthz`
keeps answering while it is (one gateway process, as the tests run it)."""

import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.auth import hash_key
from service.devstack import DevStack, free_port
from workers.demo.data import make_sample, to_png_bytes

MODEL = "demo-lesions"
# Within the test stack's 4 MiB body limit; before the byte-count guard the gateway took about
# five seconds to refuse this many unknown fields, blocking every other request meanwhile.
EXTRA_FIELDS = 300_000
# A ping may take this much longer than the slowest one to an idle gateway just before: the
# machine's own load is measured, not counted against the gateway.
HEALTHZ_MAX_S = 0.050
STALLS_TO_SEE = 3
PING_EVERY_S = 0.005
HEADER_TIMEOUT_S = 1.0


def hostile_body(**fields: object) -> bytes:
    """`fields` followed by `EXTRA_FIELDS` unknown top-level fields."""
    known = json.dumps(fields)[:-1]
    extra = ",".join(f'"f{index}":0' for index in range(EXTRA_FIELDS))
    return f"{known},{extra}}}".encode()


def explain_body() -> bytes:
    image = base64.b64encode(to_png_bytes(make_sample(3).image)).decode()
    return hostile_body(model=MODEL, image=image)


# Run in its own process, so that the test's own sending does not delay its pings.
PINGER = """
import json, sys, time, httpx
url, duration_s, every_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
latencies = []
with httpx.Client(base_url=url, timeout=10) as health:
    health.get("/healthz")  # a warm connection: time the answer, not the handshake
    print("ready", flush=True)
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        started = time.perf_counter()
        assert health.get("/healthz").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(every_s)
print(json.dumps(latencies), flush=True)
"""


def healthz_latencies(url: str, send: Callable[[], None], duration_s: float = 1.5) -> list[float]:
    """`/healthz` round trips, from another process, over `duration_s` while `send` runs in a
    loop (at least once)."""
    pinger = subprocess.Popen(
        [sys.executable, "-c", PINGER, url, str(duration_s), str(PING_EVERY_S)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert pinger.stdout is not None
    try:
        assert pinger.stdout.readline().strip() == "ready"
        send()
        while pinger.poll() is None:
            send()
        latencies: list[float] = json.loads(pinger.stdout.read())
    finally:
        pinger.kill()
        pinger.wait()
    return latencies


def assert_refused_at_once(answer: httpx.Response) -> None:
    assert answer.status_code == 422, answer.text[:300]
    assert answer.headers["content-type"] == "application/problem+json"
    assert len(answer.content) < 2_000
    assert "JSON separators" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", explain_body()),
        ("/v1/explanations", explain_body()),
        (f"/v1/models/{MODEL}/visualizations", hostile_body(target=1)),
        (f"/v1/models/{MODEL}:explain", hostile_body(instances=[{"image": "AAAA"}])),
    ],
    ids=["jobs", "explanations", "visualizations", "kserve"],
)
def test_a_body_of_many_fields_is_refused_while_healthz_answers(
    stack: DevStack, path: str, body: bytes
) -> None:
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=stack.url, timeout=30) as client:

        def send() -> None:
            started = time.perf_counter()
            answers.append(
                client.post(path, content=body, headers={"content-type": "application/json"})
            )
            assert time.perf_counter() - started < 2.0

        idle = healthz_latencies(stack.url, lambda: time.sleep(0.1))
        latencies = healthz_latencies(stack.url, send)
    for answer in answers:
        assert_refused_at_once(answer)
    assert len(latencies) >= 5
    # A parse that held the event loop would delay one ping per body sent; several bodies were
    # sent, so the third-slowest ping shows it, and one scheduling hiccup of a busy machine
    # (a single slow ping) does not.
    assert len(answers) >= STALLS_TO_SEE
    slowest = sorted(latencies)[-STALLS_TO_SEE]
    assert slowest < max(idle) + HEALTHZ_MAX_S, (sorted(idle)[-3:], sorted(latencies)[-5:])


def test_field_errors_are_listed_up_to_twenty(client: httpx.Client) -> None:
    image = base64.b64encode(to_png_bytes(make_sample(3).image)).decode()
    fields = {f"unknown{index}": index for index in range(500)}
    answer = client.post("/v1/jobs", json={"model": MODEL, "image": image, **fields})
    assert answer.status_code == 422
    problem = answer.json()
    assert len(problem["errors"]) == 20
    assert "500 errors; the first 20 are listed" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["unknown0"]


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """A gateway alone (no worker), with keys on, a 32 MiB body limit and a short deadline for
    request headers."""
    root = tmp_path_factory.mktemp("keyed")
    keys = root / "keys.json"
    entry = {"name": "alice", "sha256": hash_key("alice-secret"), "scopes": ["explain"]}
    keys.write_text(json.dumps({"keys": [entry]}))
    gateway = DevStack(
        port=free_port(),
        workers=0,
        redis_url=redis_url,
        log_dir=root / "logs",
        env={
            "GLIMPSE_AUTH": "on",
            "GLIMPSE_API_KEYS_FILE": str(keys),
            "GLIMPSE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        },
    )
    try:
        gateway.start()
        wait_for_healthz(gateway)
        yield gateway.url
    finally:
        gateway.stop()


def wait_for_healthz(gateway: DevStack, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert gateway.alive(), "the gateway exited"
        try:
            if httpx.get(f"{gateway.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway never answered /healthz")


def test_a_large_body_without_a_key_is_refused_before_it_is_read(keyed_gateway: str) -> None:
    # 30 MB of two million fields, as the probe sent: refused with 401 on its headers.
    body = b'{"model":"demo-lesions",' + b",".join(b'"f%d":0' % i for i in range(2_400_000)) + b"}"
    assert len(body) > 25_000_000
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=keyed_gateway, timeout=30) as client:
            try:
                answer = client.post(
                    "/v1/jobs", content=body, headers={"content-type": "application/json"}
                )
            except httpx.TransportError:
                statuses.append(0)  # the gateway closed the connection on the unread body
                return
            statuses.append(answer.status_code)
            assert answer.headers["www-authenticate"].startswith("Bearer")

    idle = healthz_latencies(keyed_gateway, lambda: time.sleep(0.1))
    latencies = healthz_latencies(keyed_gateway, send)
    assert set(statuses) <= {401, 0} and 401 in statuses, statuses
    assert max(latencies) < max(idle) + HEALTHZ_MAX_S, (sorted(idle)[-3:], sorted(latencies)[-5:])


def closed_after(connection: socket.socket, dribble: bytes, limit_s: float) -> float | None:
    """Seconds until the gateway closed `connection` while it was sent `dribble` a byte every
    0.1 s; None if it was still open after `limit_s`."""
    started = time.monotonic()
    connection.settimeout(0.1)
    sent = 0
    while time.monotonic() - started < limit_s:
        try:
            if sent < len(dribble):
                connection.sendall(dribble[sent : sent + 1])
                sent += 1
            if connection.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    return None


def test_a_connection_that_dribbles_its_headers_is_closed(keyed_gateway: str) -> None:
    host, port = keyed_gateway.removeprefix("http://").split(":")
    request = b"POST /v1/jobs HTTP/1.1\r\nHost: glimpse\r\nX-API-Key: " + b"x" * 400
    halves = [socket.create_connection((host, int(port))) for _ in range(20)]
    silent = socket.create_connection((host, int(port)))
    dribbler = socket.create_connection((host, int(port)))
    try:
        for half in halves:
            half.sendall(request[:60])
        closed = closed_after(dribbler, request, limit_s=HEADER_TIMEOUT_S + 3)
        assert closed is not None and closed < HEADER_TIMEOUT_S + 1, closed
        # Those that stopped halfway, and one that sent nothing at all, were closed as well.
        for connection in [*halves, silent]:
            assert closed_after(connection, b"", limit_s=1.0) is not None
    finally:
        for connection in [*halves, silent, dribbler]:
            connection.close()
    # A request whose headers come in time is served as ever, keep-alive included.
    with httpx.Client(base_url=keyed_gateway, timeout=5) as client:
        assert client.get("/healthz").status_code == 200
        time.sleep(HEADER_TIMEOUT_S + 0.5)
        assert client.get("/healthz").status_code == 200
