"""DICOMweb `source` and `store` on real parts: HTTP → gateway → Redis → worker → a private
Orthanc with its DICOMweb plugin (WADO-RS, QIDO-RS, STOW-RS), and back."""

import base64
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicom_files import PLANTED_VALUES, ct_file, dicom_file  # type: ignore[import-not-found]
from dicomweb_client import DICOMwebClient
from glimpse_client import Client, DicomwebInstance
from log_lines import logged_text  # type: ignore[import-not-found]
from orthanc_server import PASSWORD, USER, PrivateOrthanc  # type: ignore[import-not-found]
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid
from redis import Redis

from schemas.dicomweb import DicomwebServers, DicomwebSource
from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis
from workers.decoded import ImageTooLargeError
from workers.demo.data import make_sample
from workers.dicomweb import DicomwebServerCall

MODEL = "demo-lesions"
METHODS = ["gradcam"]
# A dead or silent server is given up within its timeout × attempts plus the pauses between
# them (1 s × 2 + 0.5 s here); the rest is the job's round trip.
SILENT_TIMEOUT_S = 1.0
GIVE_UP_WITHIN_S = 15.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def uids(data: bytes) -> dict[str, str]:
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {
        "study": str(dataset.StudyInstanceUID),
        "series": str(dataset.SeriesInstanceUID),
        "instance": str(dataset.SOPInstanceUID),
    }


def source_of(data: bytes, server: str = "pacs", **fields: object) -> dict[str, object]:
    return {"dicomweb": server, **uids(data), **fields}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dicomweb")


@pytest.fixture(scope="module")
def pacs(folder: Path) -> Iterator[PrivateOrthanc]:
    with PrivateOrthanc(folder / "pacs") as server:
        yield server


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture(scope="module")
def stopped_pacs(folder: Path) -> PrivateOrthanc:
    """An Orthanc configured for the stack, which its test starts and then stops."""
    return PrivateOrthanc(folder / "stopped")


@pytest.fixture(scope="module")
def servers_file(
    folder: Path, pacs: PrivateOrthanc, stopped_pacs: PrivateOrthanc, silent_port: int
) -> Path:
    right, wrong = folder / "right.password", folder / "wrong.password"
    right.write_text(PASSWORD + "\n")
    wrong.write_text("not-" + PASSWORD)

    def basic(password_file: Path) -> dict[str, object]:
        return {"type": "basic", "username": USER, "password_file": str(password_file)}

    servers = {
        "pacs": {"url": pacs.dicomweb_url, "auth": basic(right), "timeout_s": 10},
        "pacs-wrong-password": {"url": pacs.dicomweb_url, "auth": basic(wrong)},
        "stopped": {
            "url": stopped_pacs.dicomweb_url,
            "auth": basic(right),
            "timeout_s": SILENT_TIMEOUT_S,
            "retries": 1,
        },
        "silent": {
            "url": f"http://127.0.0.1:{silent_port}/dicom-web",
            "timeout_s": SILENT_TIMEOUT_S,
            "retries": 1,
        },
    }
    path = folder / "servers.json"
    path.write_text(json.dumps({"servers": servers}))
    return path


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis of this module's own: the session's stack serves `demo-lesions` too, and its
    worker, which knows no DICOMweb server, would take this module's jobs."""
    with PrivateRedis() as server:
        yield server.url


@pytest.fixture(scope="module")
def stack(redis_url: str, servers_file: Path, folder: Path) -> Iterator[DevStack]:
    """A gateway and a worker serving only the demo model, with the servers file."""
    repository = folder / "models"
    repository.mkdir()
    (repository / MODEL).symlink_to(Path(__file__).resolve().parents[2] / "models" / MODEL)
    logs = folder / "logs"
    logs.mkdir()
    running = DevStack(
        port=free_port(),
        redis_url=redis_url,
        log_dir=logs,
        env={
            "GLIMPSE_AUTH": "off",
            "GLIMPSE_MODEL_REPOSITORY": str(repository),
            "GLIMPSE_DEVICE": "cpu",
            "GLIMPSE_DICOMWEB_SERVERS": str(servers_file),
            "GLIMPSE_LOG_FORMAT": "json",
        },
    )
    with running.serving():
        yield running


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def ct(pacs: PrivateOrthanc) -> bytes:
    """An uncompressed 16-bit CT-like file of the demo lesion, held by the PACS."""
    data = ct_file(make_sample(3).image)
    pacs.upload(data)
    return data


@pytest.fixture(scope="module")
def rle(pacs: PrivateOrthanc) -> bytes:
    """An RLE Lossless 8-bit file of another demo lesion, held by the PACS."""
    levels = np.round(make_sample(5).image * 255).astype(np.uint8)
    data = dicom_file(levels, transfer_syntax=RLELossless, Modality="OT")
    pacs.upload(data)
    return data


def explain(client: httpx.Client, **fields: object) -> httpx.Response:
    return client.post("/v1/explanations", json={"model": MODEL, "methods": METHODS} | fields)


def scores(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["explanations"][0]["scores"]["values"], dtype=np.float64)


def pacs_client(pacs: PrivateOrthanc) -> DICOMwebClient:
    import requests

    session = requests.Session()
    session.auth = pacs.auth
    return DICOMwebClient(pacs.dicomweb_url, session=session)


@pytest.mark.parametrize("fixture", ["ct", "rle"])
def test_an_instance_by_its_uids_explains_as_its_file_does(
    client: httpx.Client, pacs: PrivateOrthanc, fixture: str, request: pytest.FixtureRequest
) -> None:
    data: bytes = request.getfixturevalue(fixture)
    # The PACS serves the instance in the syntax it was stored in: RLE stays RLE.
    fetched = pacs_client(pacs).retrieve_instance(**_client_uids(data))
    assert (
        fetched.file_meta.TransferSyntaxUID
        == pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    )
    by_source = explain(client, source=source_of(data), output={"size": "original"})
    uploaded = explain(client, image=b64(data), output={"size": "original"})
    # The same bytes through the same decoder and model, alone in a batch each time.
    np.testing.assert_array_equal(scores(by_source), scores(uploaded))
    assert by_source.json()["provenance"]["dicom"]["frame"] == 0


def _client_uids(data: bytes) -> dict[str, str]:
    ids = uids(data)
    return {
        "study_instance_uid": ids["study"],
        "series_instance_uid": ids["series"],
        "sop_instance_uid": ids["instance"],
    }


def test_the_result_cache_keys_on_the_server_and_uids(
    client: httpx.Client, ct: bytes, rle: bytes
) -> None:
    first = explain(client, source=source_of(ct), target="top2")
    again = explain(client, source=source_of(ct), target="top2")
    other = explain(client, source=source_of(rle), target="top2")
    assert [a.status_code for a in (first, again, other)] == [200, 200, 200]
    assert (first.json()["cached"], again.json()["cached"], other.json()["cached"]) == (
        False,
        True,
        False,
    )
    assert not np.array_equal(scores(first), scores(other))


def test_an_unknown_server_is_refused_at_the_door(client: httpx.Client, ct: bytes) -> None:
    by_source = explain(client, source=source_of(ct, server="elsewhere"))
    by_store = explain(client, image=b64(ct), store={"dicomweb": "elsewhere"})
    for answer in (by_source, by_store):
        assert answer.status_code == 422, answer.text
        assert "'elsewhere'" in answer.json()["detail"]
        assert "pacs" in answer.json()["detail"]


@pytest.mark.parametrize(
    "fields",
    [
        {},  # neither image nor source
        {
            "image": "AAAA",
            "source": {"dicomweb": "pacs", "study": "1", "series": "2", "instance": "3"},
        },
        {"source": {"dicomweb": "pacs", "study": "1.02", "series": "2", "instance": "3"}},
        {"source": {"dicomweb": "pacs", "study": "1.2", "series": "2", "instance": "x"}},
        {"source": {"dicomweb": "http://evil/", "study": "1", "series": "2", "instance": "3"}},
        {"source": {"dicomweb": "pacs", "study": "1", "series": "2", "instance": "3", "url": "x"}},
        {
            "source": {
                "dicomweb": "pacs",
                "study": "1",
                "series": "2",
                "instance": "3",
                "frame": 1,
            },
            "dicom": {"frame": 0},
        },
    ],
)
def test_malformed_references_are_refused(client: httpx.Client, fields: dict[str, object]) -> None:
    answer = explain(client, **fields)
    assert answer.status_code == 422, answer.text


def test_an_instance_the_server_lacks_is_404_naming_its_uids(
    client: httpx.Client, ct: bytes
) -> None:
    missing = source_of(ct, instance=generate_uid())
    answer = explain(client, source=missing)
    assert answer.status_code == 404, answer.text
    problem = answer.json()
    assert problem["type"] == "urn:glimpse:problem:not-found"
    for uid in (missing["study"], missing["series"], missing["instance"]):
        assert uid in problem["detail"]


def test_a_wrong_password_fails_with_502(client: httpx.Client, ct: bytes) -> None:
    answer = explain(client, source=source_of(ct, server="pacs-wrong-password"))
    assert answer.status_code == 502, answer.text
    assert answer.json()["type"] == "urn:glimpse:problem:dicomweb-failed"
    assert "credentials" in answer.json()["detail"]
    assert PASSWORD not in answer.text


def test_a_stopped_orthanc_fails_with_502_in_bounded_time(
    client: httpx.Client, ct: bytes, stopped_pacs: PrivateOrthanc
) -> None:
    with stopped_pacs:
        stopped_pacs.upload(ct)
        assert explain(client, source=source_of(ct, server="stopped")).status_code == 200
    started = time.monotonic()
    answer = explain(client, source=source_of(ct, server="stopped"), target=0)
    assert answer.status_code == 502, answer.text
    assert answer.json()["type"] == "urn:glimpse:problem:dicomweb-failed"
    assert time.monotonic() - started < GIVE_UP_WITHIN_S


def test_a_silent_server_fails_with_504_in_bounded_time(client: httpx.Client, ct: bytes) -> None:
    started = time.monotonic()
    answer = explain(client, source=source_of(ct, server="silent"))
    elapsed = time.monotonic() - started
    assert answer.status_code == 504, answer.text
    assert answer.json()["type"] == "urn:glimpse:problem:dicomweb-timeout"
    assert "2 attempts" in answer.json()["detail"]
    assert 2 * SILENT_TIMEOUT_S <= elapsed < GIVE_UP_WITHIN_S


def secondary_capture_of(data: bytes) -> bytes:
    """A derived Secondary Capture of `data`: its study, a new series, the source referenced."""
    source = pydicom.dcmread(io.BytesIO(data))
    derived = pydicom.dcmread(io.BytesIO(dicom_file(source.pixel_array.astype(np.uint16))))
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
        setattr(derived, keyword, getattr(source, keyword))
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    derived.SourceImageSequence = [reference]
    derived.SeriesDescription = "glimpse gradcam"
    out = io.BytesIO()
    derived.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_stow_rs_stores_what_qido_and_wado_read_back(
    pacs: PrivateOrthanc, servers_file: Path, ct: bytes
) -> None:
    servers = DicomwebServers.model_validate_json(servers_file.read_bytes())
    derived = secondary_capture_of(ct)
    stored = DicomwebServerCall(servers, "pacs").store([("secondary_capture", derived)])
    (instance,) = stored.instances
    assert instance.sop_instance_uid == uids(derived)["instance"]
    assert instance.series_instance_uid != uids(ct)["series"]
    reader = pacs_client(pacs)
    found = reader.search_for_series(study_instance_uid=uids(ct)["study"])
    series = {item["0020000E"]["Value"][0] for item in found}
    assert series == {uids(ct)["series"], instance.series_instance_uid}
    read_back = reader.retrieve_instance(
        uids(ct)["study"], instance.series_instance_uid, instance.sop_instance_uid
    )
    assert read_back.StudyInstanceUID == uids(ct)["study"]
    assert read_back.SourceImageSequence[0].ReferencedSOPInstanceUID == uids(ct)["instance"]
    np.testing.assert_array_equal(
        read_back.pixel_array, pydicom.dcmread(io.BytesIO(ct)).pixel_array
    )


def redis_contents(redis_url: str) -> tuple[list[bytes], bytes]:
    """Every key name in Redis, and every value (strings, hashes, sets, sorted sets, lists and
    streams) joined."""
    store = Redis.from_url(redis_url)
    names = list(store.scan_iter(count=1000))
    values = []
    for name in names:
        kind = store.type(name)
        if kind == b"string":
            values.append(store.get(name) or b"")
        elif kind == b"hash":
            values.extend(b"%s=%s" % item for item in store.hgetall(name).items())
        elif kind == b"set":
            values.extend(store.smembers(name))
        elif kind == b"zset":
            values.extend(store.zrange(name, 0, -1))
        elif kind == b"list":
            values.extend(store.lrange(name, 0, -1))
        elif kind == b"stream":
            values.extend(repr(entry).encode() for entry in store.xrange(name))
    store.close()
    return names, b"\n".join(values)


def test_no_header_value_of_a_fetched_instance_reaches_a_log_or_redis(
    client: httpx.Client, stack: DevStack, ct: bytes, redis_url: str
) -> None:
    answer = explain(
        client,
        source=source_of(ct),
        target=1,
        store={"dicomweb": "pacs"},
        output={"dicom": ["secondary_capture"]},
    )
    assert answer.status_code == 200, answer.text
    # The derived object carries the patient (it must), and only it: nothing else names them.
    body = answer.json()
    for explanation in body["explanations"]:
        del explanation["dicom"]
    assert not any(value in json.dumps(body) for value in PLANTED_VALUES)
    names, values = redis_contents(redis_url)
    assert any(body["job_id"].encode() in name for name in names)  # the job is there to scan
    for secret in (*PLANTED_VALUES, *uids(ct).values()):
        assert not any(secret.encode() in name for name in names), secret
    for planted in PLANTED_VALUES:
        assert planted.encode() not in values, planted
    time.sleep(0.5)
    assert stack.log_dir is not None
    raw = "".join(path.read_text(errors="replace") for path in stack.log_dir.glob("*.log"))
    decoded = logged_text(stack.log_dir)
    assert answer.json()["job_id"] in decoded
    for logs in (raw, decoded):
        assert not any(value in logs for value in PLANTED_VALUES)
        assert PASSWORD not in logs


def test_store_without_derived_objects_fails_and_stores_nothing(
    client: httpx.Client, pacs: PrivateOrthanc, rle: bytes
) -> None:
    study = uids(rle)["study"]
    before = pacs_client(pacs).search_for_series(study_instance_uid=study)
    answer = explain(client, source=source_of(rle), store={"dicomweb": "pacs"})
    assert answer.status_code == 422, answer.text
    assert "output.dicom" in answer.json()["detail"]
    assert pacs_client(pacs).search_for_series(study_instance_uid=study) == before


def test_a_grid_larger_than_the_fetched_image_is_422(client: httpx.Client, ct: bytes) -> None:
    rows = pydicom.dcmread(io.BytesIO(ct), stop_before_pixels=True).Rows
    answer = explain(client, source=source_of(ct), output={"grid": rows + 1})
    assert answer.status_code == 422, answer.text
    assert f"output.grid {rows + 1}" in answer.json()["detail"]
    fitting = explain(client, source=source_of(ct), output={"grid": rows})
    assert np.array(fitting.json()["explanations"][0]["scores"]["values"]).shape == (rows, rows)


DERIVED = ["secondary_capture", "parametric_map", "segmentation"]


def referenced_instances(dataset: Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in the dataset, sequences included."""
    found: set[str] = set()
    for element in dataset.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
    return found


@pytest.mark.parametrize("fixture", ["ct", "rle"])
def test_store_round_trip_through_orthanc(
    client: httpx.Client, pacs: PrivateOrthanc, fixture: str, request: pytest.FixtureRequest
) -> None:
    data: bytes = request.getfixturevalue(fixture)
    source = uids(data)
    answer = explain(
        client,
        source=source_of(data),
        store={"dicomweb": "pacs"},
        output={"dicom": DERIVED, "scores": "none"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    stored = body["stored"]
    assert stored["dicomweb"] == "pacs"
    assert sorted(i["kind"] for i in stored["instances"]) == sorted(DERIVED)
    returned = {
        pydicom.dcmread(io.BytesIO(base64.b64decode(encoded))).SOPInstanceUID
        for encoded in body["explanations"][0]["dicom"].values()
    }
    assert {i["sop_instance_uid"] for i in stored["instances"]} == returned
    reader = pacs_client(pacs)
    listed = {
        item["0020000E"]["Value"][0]
        for item in reader.search_for_series(study_instance_uid=source["study"])
    }
    for instance in stored["instances"]:
        assert instance["series_instance_uid"] in listed
        assert instance["series_instance_uid"] != source["series"]
        found = reader.search_for_instances(
            study_instance_uid=source["study"], series_instance_uid=instance["series_instance_uid"]
        )
        assert [item["00080018"]["Value"][0] for item in found] == [instance["sop_instance_uid"]]
        read_back = reader.retrieve_instance(
            source["study"], instance["series_instance_uid"], instance["sop_instance_uid"]
        )
        assert read_back.StudyInstanceUID == source["study"]
        assert read_back.SOPClassUID == instance["sop_class_uid"]
        assert source["instance"] in referenced_instances(read_back)
        assert read_back.pixel_array.shape == expected_shape(read_back)
        assert np.isfinite(read_back.pixel_array.astype(np.float64)).all()
        if instance["kind"] == "secondary_capture":
            overlay = Image.open(
                io.BytesIO(base64.b64decode(body["explanations"][0]["overlay_png"]))
            )
            np.testing.assert_array_equal(read_back.pixel_array, np.asarray(overlay.convert("RGB")))


def test_the_python_client_explains_an_instance_in_place_and_stores_its_objects(
    stack: DevStack, pacs: PrivateOrthanc, ct: bytes
) -> None:
    source = uids(ct)
    with Client(stack.url) as glimpse:
        result = glimpse.explain(
            DicomwebInstance("pacs", **source),
            MODEL,
            METHODS,
            store="pacs",
            output={"dicom": DERIVED, "size": "original"},
        )
        uploaded = glimpse.explain(ct, MODEL, METHODS, output={"size": "original"})

    assert result.stored is not None and result.stored.dicomweb == "pacs"
    assert sorted(i.kind for i in result.stored.instances) == sorted(DERIVED)
    # The instance fetched by WADO-RS is the file uploaded: the same map.
    np.testing.assert_array_equal(result.explanations[0].map, uploaded.explanations[0].map)
    reader = pacs_client(pacs)
    for instance in result.stored.instances:
        found = reader.search_for_instances(
            study_instance_uid=source["study"], series_instance_uid=instance.series_instance_uid
        )
        assert [item["00080018"]["Value"][0] for item in found] == [instance.sop_instance_uid]


def expected_shape(dataset: Dataset) -> tuple[int, ...]:
    """The shape pydicom gives a dataset's pixels: frames (when more than one), rows, columns,
    samples (when more than one)."""
    frames = int(dataset.get("NumberOfFrames", 1))
    samples = int(dataset.SamplesPerPixel)
    return (
        *((frames,) if frames > 1 else ()),
        int(dataset.Rows),
        int(dataset.Columns),
        *((samples,) if samples > 1 else ()),
    )


def test_a_store_request_is_never_answered_from_the_cache(client: httpx.Client, ct: bytes) -> None:
    fields = {
        "source": source_of(ct),
        "store": {"dicomweb": "pacs"},
        "output": {"dicom": ["secondary_capture"], "scores": "none"},
        "target": 0,
    }
    first, second = explain(client, **fields), explain(client, **fields)
    assert [first.status_code, second.status_code] == [200, 200], second.text
    assert [first.json()["cached"], second.json()["cached"]] == [False, False]
    (one,), (two,) = first.json()["stored"]["instances"], second.json()["stored"]["instances"]
    assert one["sop_instance_uid"] != two["sop_instance_uid"]


def test_a_refused_stow_fails_the_job_with_502(client: httpx.Client, ct: bytes) -> None:
    answer = explain(
        client,
        source=source_of(ct),
        store={"dicomweb": "pacs-wrong-password"},
        output={"dicom": ["segmentation"]},
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["type"] == "urn:glimpse:problem:dicomweb-failed"
    assert "STOW" in answer.json()["detail"] or "credentials" in answer.json()["detail"]


def test_an_instance_over_the_pixel_limit_is_refused_from_its_metadata(
    servers_file: Path, ct: bytes
) -> None:
    header = pydicom.dcmread(io.BytesIO(ct), stop_before_pixels=True)
    pixels = header.Rows * header.Columns
    server = DicomwebServerCall(
        DicomwebServers.model_validate_json(servers_file.read_bytes()), "pacs"
    )
    reference = DicomwebSource.model_validate(source_of(ct))
    with pytest.raises(ImageTooLargeError, match=f"at most {pixels - 1} pixels"):
        server.fetch(reference, max_pixels=pixels - 1)
    fetched = pydicom.dcmread(io.BytesIO(server.fetch(reference, max_pixels=pixels)))
    np.testing.assert_array_equal(fetched.pixel_array, pydicom.dcmread(io.BytesIO(ct)).pixel_array)
