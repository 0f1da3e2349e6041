"""The gateway's checks of a request's DICOMweb references, and of the servers file at start."""

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from schemas.dicom import DicomOptions, DicomWindow
from schemas.dicomweb import DicomwebConfigError
from schemas.explain import ExplainOptions
from service.app import create_app
from service.config import Settings
from service.dicomweb import check_dicomweb
from service.errors import InvalidRequest

SOURCE = {"dicomweb": "pacs", "study": "1.2.3", "series": "1.2.4", "instance": "1.2.5"}


@pytest.fixture()
def servers_file(tmp_path: Path) -> Path:
    path = tmp_path / "servers.json"
    servers = {"pacs": {"url": "http://127.0.0.1:1/dicom-web"}, "archive": {"url": "http://a"}}
    path.write_text(json.dumps({"servers": servers}))
    return path


def options(**fields: object) -> ExplainOptions:
    return ExplainOptions.model_validate({"model": "m"} | fields)


def test_a_source_gives_its_frame_and_keeps_the_window(servers_file: Path) -> None:
    window = {"center": 40, "width": 400}
    checked = check_dicomweb(
        options(source=SOURCE | {"frame": 2}, dicom={"window": window}), servers_file
    )
    assert checked == DicomOptions(frame=2, window=DicomWindow(center=40, width=400))
    assert check_dicomweb(options(source=SOURCE), servers_file) == DicomOptions(frame=0)
    same = check_dicomweb(options(source=SOURCE | {"frame": 1}, dicom={"frame": 1}), servers_file)
    assert same is not None and same.frame == 1


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"source": SOURCE | {"dicomweb": "other"}},
            "No DICOMweb server 'other'; known: archive, pacs",
        ),
        ({"store": {"dicomweb": "other"}, "output": {"dicom": ["segmentation"]}}, "'other'"),
        ({"store": {"dicomweb": "pacs"}}, "output.dicom"),
        ({"source": SOURCE | {"frame": 1}, "dicom": {"frame": 0}}, "source.frame"),
    ],
)
def test_what_the_gateway_refuses(servers_file: Path, fields: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(says)):
        check_dicomweb(options(**fields), servers_file)


def test_without_a_servers_file_every_name_is_unknown() -> None:
    with pytest.raises(InvalidRequest, match="none is configured"):
        check_dicomweb(options(source=SOURCE), None)
    assert check_dicomweb(options(), None) is None


def test_a_gateway_with_a_malformed_servers_file_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": {"pacs": {"url": "ftp://pacs"}}}))
    settings = Settings(redis_url="redis://127.0.0.1:1/0", auth=False, dicomweb_servers=path)
    with (
        pytest.raises(DicomwebConfigError, match="servers.pacs.url"),
        TestClient(create_app(settings)),
    ):
        pass
