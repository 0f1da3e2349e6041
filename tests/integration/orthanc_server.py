"""A private Orthanc with its DICOMweb plugin: free HTTP and DICOM ports, its own storage folder
and configuration, one user for HTTP basic auth; stopped and removed at the end."""

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from service.devstack import free_port

USER = "glimpse"
PASSWORD = "orthanc-test-password"
START_TIMEOUT_S = 30.0


def dicomweb_plugin() -> Path:
    """The DICOMweb plugin's shared library, as Debian's orthanc-dicomweb package installs it."""
    listed = subprocess.run(
        ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
    ).stdout.split()
    plugins = [Path(p) for p in listed if "/plugins/" in p and p.endswith(".so")]
    assert plugins, "orthanc-dicomweb lists no plugin (make orthanc installs it)"
    return plugins[0]


@dataclass
class PrivateOrthanc:
    """`with PrivateOrthanc(folder) as pacs:` serves at `pacs.dicomweb_url` until the block ends."""

    folder: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def start(self) -> "PrivateOrthanc":
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(
            json.dumps(
                {
                    "Name": "glimpse-test",
                    "StorageDirectory": str(storage),
                    "IndexDirectory": str(storage),
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": True,
                    "RegisteredUsers": {USER: PASSWORD},
                    "Plugins": [str(dicomweb_plugin())],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                }
            )
        )
        log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            ["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_text()
            try:
                if httpx.get(f"{self.url}/system", auth=self.auth, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"Orthanc did not answer in {START_TIMEOUT_S:g} s: {self.log_text()}")

    def log_text(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def upload(self, data: bytes) -> None:
        """Store a DICOM file through Orthanc's own REST API (not DICOMweb)."""
        answer = httpx.post(f"{self.url}/instances", content=data, auth=self.auth, timeout=30)
        assert answer.status_code == 200, answer.text

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> "PrivateOrthanc":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
