"""WADO-RS fetch and STOW-RS store against a configured DICOMweb server (with dicomweb-client),
each HTTP call bounded by the server's timeout and retried a bounded number of times.

Secrets are read from their files at each connection, so that a rotated one is taken up without
a restart; neither a secret nor a header value reaches a log line or an error.
"""

import base64
import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from schemas import problems
from schemas.dicomweb import (
    DerivedKind,
    DicomwebServer,
    DicomwebServers,
    DicomwebSource,
    DicomwebStore,
    StoredInstance,
    StoredObjects,
)
from schemas.explain import ExplainResponse, OutputOptions
from schemas.problems import ProblemKind
from workers.decoded import DicomOptionError, ImageTooLargeError

# Its lines quote the UIDs it fetches or stores and the server's headers; what failed is raised
# as a DicomwebError instead, which names only what the caller gave.
logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)

T = TypeVar("T")
RETRY_PAUSE_S = 0.5
_AUTH_REFUSALS = (401, 403)
_RETRIED_STATUSES = (408, 429)
# DICOM JSON tags of Rows, Columns and Number of Frames.
_ROWS, _COLUMNS, _FRAMES = "00280010", "00280011", "00280008"


class DicomwebError(Exception):
    """A DICOMweb call that failed; `kind` is the problem its job fails with."""

    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class DicomwebServerCall:
    """Calls to one configured server, by its name."""

    def __init__(self, servers: DicomwebServers, name: str) -> None:
        server = servers.servers.get(name)
        if server is None:
            raise DicomwebError(
                problems.INVALID_REQUEST, f"This worker has no DICOMweb server {name!r}."
            )
        self.name = name
        self.server = server

    def fetch(self, source: DicomwebSource, max_pixels: int) -> bytes:
        """The instance's Part 10 bytes, in the transfer syntax the server holds it in; 404 (as
        NOT_FOUND) naming the UIDs when the server does not have it. Its metadata is read first,
        so that an instance of more than `max_pixels` (Rows × Columns × frames) is refused with
        ImageTooLargeError before it is downloaded."""

        def metadata(client: DICOMwebClient) -> dict[str, Any]:
            return client.retrieve_instance_metadata(source.study, source.series, source.instance)

        def retrieve(client: DICOMwebClient) -> Dataset:
            return client.retrieve_instance(source.study, source.series, source.instance)

        try:
            _check_pixels(self._call(metadata, "WADO-RS metadata retrieval"), max_pixels)
            dataset = self._call(retrieve, "WADO-RS retrieval")
        except _NotFound as exc:
            raise DicomwebError(
                problems.NOT_FOUND,
                f"DICOMweb server {self.name!r} has no instance {source.describe()}.",
            ) from exc
        out = io.BytesIO()
        pydicom.dcmwrite(out, dataset, enforce_file_format=False)
        return out.getvalue()

    def store(self, objects: Sequence[tuple[DerivedKind, bytes]]) -> StoredObjects:
        """STOW-RS the objects; what the server acknowledged, or DicomwebError when it refused
        any of them."""
        datasets = [(kind, pydicom.dcmread(io.BytesIO(data))) for kind, data in objects]

        def send(client: DICOMwebClient) -> Dataset:
            return client.store_instances([dataset for _, dataset in datasets])

        try:
            answer = self._call(send, "STOW-RS store")
        except _NotFound as exc:
            raise DicomwebError(
                problems.DICOMWEB_FAILED, f"DICOMweb server {self.name!r} has no STOW-RS service."
            ) from exc
        acknowledged = {
            str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])
        }
        instances = [
            StoredInstance(
                sop_instance_uid=str(dataset.SOPInstanceUID),
                sop_class_uid=str(dataset.SOPClassUID),
                series_instance_uid=str(dataset.SeriesInstanceUID),
                kind=kind,
            )
            for kind, dataset in datasets
        ]
        refused = [i for i in instances if i.sop_instance_uid not in acknowledged]
        if refused or answer.get("FailedSOPSequence"):
            raise DicomwebError(
                problems.DICOMWEB_FAILED,
                f"DICOMweb server {self.name!r} refused {max(len(refused), 1)} of "
                f"{len(instances)} objects.",
            )
        return StoredObjects(dicomweb=self.name, instances=instances)

    def _call(self, call: Callable[[DICOMwebClient], T], what: str) -> T:
        """`call` with a fresh client, retried after a connection failure, a timeout or a 5xx
        (429 and 408 too) at most `retries` times; `_NotFound` for a 404."""
        failure = DicomwebError(problems.DICOMWEB_FAILED, f"The {what} did not run.")
        for attempt in range(self.server.retries + 1):
            if attempt:
                time.sleep(RETRY_PAUSE_S * attempt)
            try:
                return call(self._client())
            except requests.HTTPError as exc:
                failure = self._refusal(exc, what)
            except requests.Timeout:
                failure = DicomwebError(
                    problems.DICOMWEB_TIMEOUT,
                    f"DICOMweb server {self.name!r} did not answer the {what} within "
                    f"{self.server.timeout_s:g} s ({attempt + 1} attempts).",
                )
            except requests.RequestException:
                failure = DicomwebError(
                    problems.DICOMWEB_FAILED,
                    f"DICOMweb server {self.name!r} cannot be reached ({attempt + 1} attempts).",
                )
            except (ValueError, pydicom.errors.InvalidDicomError) as exc:
                raise DicomwebError(
                    problems.DICOMWEB_FAILED,
                    f"DICOMweb server {self.name!r} sent an unreadable answer to the {what}.",
                ) from exc
        raise failure

    def _refusal(self, exc: requests.HTTPError, what: str) -> DicomwebError:
        """The error of an HTTP error status; raised at once unless a retry may help."""
        status = exc.response.status_code if exc.response is not None else 0
        if status == 404:  # noqa: PLR2004 - the one status that names the instance
            raise _NotFound from exc
        if status in _AUTH_REFUSALS:
            raise DicomwebError(
                problems.DICOMWEB_FAILED,
                f"DICOMweb server {self.name!r} refused the configured credentials ({status}).",
            ) from exc
        failure = DicomwebError(
            problems.DICOMWEB_FAILED,
            f"DICOMweb server {self.name!r} answered the {what} with HTTP {status}.",
        )
        if status < 500 and status not in _RETRIED_STATUSES:  # noqa: PLR2004 - 5xx: retried
            raise failure from exc
        return failure

    def _client(self) -> DICOMwebClient:
        client = DICOMwebClient(
            self.server.url, session=_session(self.name, self.server), timeout=self.server.timeout_s
        )
        client.set_http_retry_params(retry=False)  # retried here, a bounded number of times
        return client


def _check_pixels(attributes: dict[str, Any], max_pixels: int) -> None:
    """ImageTooLargeError when the DICOM JSON metadata's Rows × Columns × Number of Frames
    exceeds `max_pixels`; a value it lacks is left to the decoder's own check."""
    try:
        rows, columns = (int(attributes[tag]["Value"][0]) for tag in (_ROWS, _COLUMNS))
        frames = int(attributes.get(_FRAMES, {}).get("Value", [1])[0])
    except (KeyError, IndexError, TypeError, ValueError):
        return
    if rows * columns * frames > max_pixels:
        raise ImageTooLargeError(
            f"The instance is {rows}×{columns}×{frames}; at most {max_pixels} pixels are "
            "accepted (Rows × Columns × frames)."
        )


class _NotFound(Exception):
    """The server answered 404."""


def _session(name: str, server: DicomwebServer) -> requests.Session:
    session = requests.Session()
    auth = server.auth
    if auth.type == "basic" and auth.username is not None and auth.password_file is not None:
        session.auth = (auth.username, _secret(name, auth.password_file))
    elif auth.type == "bearer" and auth.token_file is not None:
        session.headers["Authorization"] = f"Bearer {_secret(name, auth.token_file)}"
    return session


def _secret(name: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DicomwebError(
            problems.DICOMWEB_FAILED,
            f"The credentials file of DICOMweb server {name!r} is unreadable.",
        ) from exc


def stored_response(
    servers: DicomwebServers, store: DicomwebStore, response: ExplainResponse
) -> ExplainResponse:
    """`response` once its derived DICOM objects are stored by STOW-RS, listing them in
    `stored`; DicomwebError (422) when it has none to store."""
    objects = derived_objects(response)
    if not objects:
        raise DicomwebError(
            problems.INVALID_REQUEST,
            "`store` sends the derived DICOM objects: ask for them in `output.dicom`.",
        )
    stored = DicomwebServerCall(servers, store.dicomweb).store(objects)
    return response.model_copy(update={"stored": stored})


def derived_objects(response: ExplainResponse) -> list[tuple[DerivedKind, bytes]]:
    """The Part 10 bytes of every derived object in the response, with its kind."""
    return [
        (kind, base64.b64decode(encoded))
        for explanation in response.explanations
        for kind, encoded in (explanation.dicom or {}).items()
    ]


def check_grid_fits(output: OutputOptions, data: bytes, model_size: tuple[int, int]) -> None:
    """The gateway's check of an upload's `output.grid`, for a fetched instance: the grid must
    fit the map (the instance's Rows × Columns, or the model's input size); DicomOptionError
    (422) when it does not. A header that does not read is left to the decoder to refuse."""
    if output.grid is None:
        return
    height, width = model_size
    if output.size == "original":
        try:
            header = pydicom.dcmread(io.BytesIO(data), specific_tags=["Rows", "Columns"])
            height, width = int(header.Rows), int(header.Columns)
        except (AttributeError, TypeError, ValueError, pydicom.errors.InvalidDicomError):
            return
    if output.grid > min(height, width):
        raise DicomOptionError(
            f"output.grid {output.grid} exceeds the {height}×{width} map; "
            f"at most {min(height, width)}."
        )
