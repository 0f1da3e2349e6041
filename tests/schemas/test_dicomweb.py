"""The DICOMweb servers file and a request's `source` and `store`, as validated."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.dicomweb import (
    DicomwebConfigError,
    DicomwebServers,
    DicomwebSource,
    load_dicomweb_servers,
)
from schemas.explain import ExplainRequest

SOURCE = {"dicomweb": "pacs", "study": "1.2.840.1", "series": "1.2.840.2", "instance": "1.0.3"}


def test_a_servers_file_reads_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": {"pacs": {"url": "http://pacs:8042/dicom-web"}}}))
    ((name, server),) = load_dicomweb_servers(path).servers.items()
    assert name == "pacs"
    assert (server.auth.type, server.timeout_s, server.retries) == ("none", 30.0, 2)


@pytest.mark.parametrize(
    "server",
    [
        {"url": "pacs:8042"},  # not http(s)
        {"url": "http://pacs", "auth": {"type": "basic", "username": "u"}},
        {"url": "http://pacs", "auth": {"type": "basic", "password_file": "/p"}},
        {"url": "http://pacs", "auth": {"type": "bearer"}},
        {"url": "http://pacs", "auth": {"type": "digest"}},
        {"url": "http://pacs", "auth": {"type": "basic", "username": "u", "password": "inline"}},
        {"url": "http://pacs", "timeout_s": 0},
        {"url": "http://pacs", "retries": 6},
    ],
)
def test_a_malformed_server_is_refused(server: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DicomwebServers.model_validate({"servers": {"pacs": server}})


def test_a_malformed_file_names_the_field_and_never_a_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    secret = "inline-secret-Zq81"
    path.write_text(json.dumps({"servers": {"pacs": {"url": "http://p", "token": secret}}}))
    with pytest.raises(DicomwebConfigError) as refused:
        load_dicomweb_servers(path)
    assert "servers.pacs.token" in str(refused.value)
    assert secret not in str(refused.value)
    with pytest.raises(DicomwebConfigError, match="cannot read"):
        load_dicomweb_servers(tmp_path / "missing.json")


def test_no_file_configures_no_server() -> None:
    assert load_dicomweb_servers(None).servers == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("study", "1.02.3"),  # a leading zero
        ("study", "1..2"),
        ("series", "1.2."),
        ("instance", "1." + "2" * 63),  # 65 characters
        ("instance", ""),
        ("dicomweb", "http://host/dicom-web"),
        ("frame", -1),
    ],
)
def test_a_malformed_source_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        DicomwebSource.model_validate(SOURCE | {field: value})


def test_a_request_gives_exactly_one_of_image_and_source() -> None:
    assert ExplainRequest.model_validate({"model": "m", "source": SOURCE}).source is not None
    assert ExplainRequest.model_validate({"model": "m", "image": "AAAA"}).image == "AAAA"
    for fields in ({}, {"image": "AAAA", "source": SOURCE}):
        with pytest.raises(ValidationError, match="exactly one"):
            ExplainRequest.model_validate({"model": "m"} | fields)
