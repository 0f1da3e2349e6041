"""The worker's DICOMweb calls against small real HTTP servers: what is retried and how often,
what each failure becomes, and the credentials each auth type sends."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from dicom_files import dicom_file  # type: ignore[import-not-found]

from schemas import problems
from schemas.dicomweb import DicomwebServers, DicomwebSource
from schemas.explain import OutputOptions
from workers.decoded import DicomOptionError
from workers.dicomweb import DicomwebError, DicomwebServerCall, check_grid_fits

SOURCE = DicomwebSource(dicomweb="pacs", study="1.2.3", series="1.2.4", instance="1.2.5")
TOKEN = "token-Xk29q"


@dataclass
class Answering:
    """A real HTTP server answering every request with `status`, unless it requires a bearer
    token that the request lacks (401); it records each request's Authorization header."""

    status: int
    token: str | None = None
    seen: list[str | None] = field(default_factory=list)


@pytest.fixture()
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Answering, str]]:
    answering: Answering = request.param

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            sent = self.headers.get("Authorization")
            answering.seen.append(sent)
            refused = answering.token is not None and sent != f"Bearer {answering.token}"
            self.send_response(401 if refused else answering.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield answering, f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    httpd.shutdown()
    httpd.server_close()


def call(url: str, **server: object) -> DicomwebServerCall:
    servers = DicomwebServers.model_validate(
        {"servers": {"pacs": {"url": url, "timeout_s": 5, "retries": 1} | server}}
    )
    return DicomwebServerCall(servers, "pacs")


def failure(call: DicomwebServerCall) -> DicomwebError:
    with pytest.raises(DicomwebError) as failed:
        call.fetch(SOURCE, max_pixels=10**6)
    return failed.value


@pytest.mark.parametrize("server", [Answering(503)], indirect=True)
def test_a_5xx_is_retried_then_fails_as_502(server: tuple[Answering, str]) -> None:
    answering, url = server
    error = failure(call(url, retries=2))
    assert error.kind is problems.DICOMWEB_FAILED
    assert "HTTP 503" in str(error)
    assert len(answering.seen) == 3


@pytest.mark.parametrize("server", [Answering(400)], indirect=True)
def test_a_4xx_is_not_retried(server: tuple[Answering, str]) -> None:
    answering, url = server
    error = failure(call(url, retries=2))
    assert error.kind is problems.DICOMWEB_FAILED
    assert len(answering.seen) == 1


@pytest.mark.parametrize("server", [Answering(404)], indirect=True)
def test_a_404_names_the_instance(server: tuple[Answering, str]) -> None:
    answering, url = server
    error = failure(call(url))
    assert error.kind is problems.NOT_FOUND
    assert all(uid in str(error) for uid in (SOURCE.study, SOURCE.series, SOURCE.instance))
    assert len(answering.seen) == 1


@pytest.mark.parametrize("server", [Answering(404, token=TOKEN)], indirect=True)
def test_bearer_auth_sends_the_token_from_its_file(
    server: tuple[Answering, str], tmp_path: Path
) -> None:
    answering, url = server
    right, wrong = tmp_path / "right.token", tmp_path / "wrong.token"
    right.write_text(TOKEN + "\n")
    wrong.write_text("not-" + TOKEN)
    authorised = failure(call(url, auth={"type": "bearer", "token_file": str(right)}))
    assert authorised.kind is problems.NOT_FOUND  # past the credentials check
    refused = failure(call(url, auth={"type": "bearer", "token_file": str(wrong)}))
    assert refused.kind is problems.DICOMWEB_FAILED
    assert "credentials" in str(refused)
    assert TOKEN not in str(refused)
    assert answering.seen == [f"Bearer {TOKEN}", f"Bearer not-{TOKEN}"]


@pytest.mark.parametrize("server", [Answering(404)], indirect=True)
def test_an_unreadable_secret_fails_before_any_request(
    server: tuple[Answering, str], tmp_path: Path
) -> None:
    answering, url = server
    missing = tmp_path / "missing.password"
    auth = {"type": "basic", "username": "glimpse", "password_file": str(missing)}
    error = failure(call(url, auth=auth))
    assert error.kind is problems.DICOMWEB_FAILED
    assert "credentials file" in str(error)
    assert answering.seen == []


def test_a_closed_port_fails_as_502_after_its_retries() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = failure(call(f"http://127.0.0.1:{port}/dicom-web"))
    assert error.kind is problems.DICOMWEB_FAILED
    assert "2 attempts" in str(error)


def test_a_server_this_worker_lacks_is_422() -> None:
    with pytest.raises(DicomwebError) as failed:
        DicomwebServerCall(DicomwebServers(), "pacs")
    assert failed.value.kind is problems.INVALID_REQUEST


def test_the_grid_must_fit_the_fetched_image_or_the_model() -> None:
    data = dicom_file(np.zeros((8, 12), dtype=np.uint8))
    check_grid_fits(OutputOptions(grid=8), data, (4, 4))
    check_grid_fits(OutputOptions(grid=4, size="model"), data, (4, 4))
    for output in (OutputOptions(grid=9), OutputOptions(grid=5, size="model")):
        with pytest.raises(DicomOptionError, match="exceeds"):
            check_grid_fits(output, data, (4, 4))
