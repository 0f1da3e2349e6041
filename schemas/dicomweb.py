"""DICOMweb (SPEC §3): the servers configured by name, a request's `source` and `store`, and
what a stored job lists.

The servers file is read by the gateway (only to know the names a request may give) and by the
worker (which reads each server's secrets from their own files when it connects); a request
never gives a URL.
"""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
"""A DICOM UID (PS3.5 §9.1): dot-separated numbers without leading zeros."""
SERVER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

Uid = Annotated[str, Field(min_length=1, max_length=64, pattern=UID_PATTERN)]
ServerName = Annotated[str, Field(pattern=SERVER_NAME_PATTERN, examples=["pacs"])]
DerivedKind = Literal["secondary_capture", "parametric_map", "segmentation"]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2


class DicomwebAuth(BaseModel):
    """How the worker authenticates to one server: none, HTTP basic with a password read from
    `password_file`, or a bearer token read from `token_file`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password_file: Path | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _files_for_type(self) -> Self:
        if self.type == "basic" and (self.username is None or self.password_file is None):
            raise ValueError("basic auth needs `username` and `password_file`")
        if self.type == "bearer" and self.token_file is None:
            raise ValueError("bearer auth needs `token_file`")
        return self


class DicomwebServer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s]+$", examples=["http://pacs:8042/dicom-web"])
    auth: DicomwebAuth = Field(default_factory=DicomwebAuth)
    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        le=300,
        description="connect and read timeout of one HTTP request",
    )
    retries: int = Field(
        default=DEFAULT_RETRIES,
        ge=0,
        le=5,
        description="further attempts after a connection failure, a timeout or a 5xx",
    )


class DicomwebServers(BaseModel):
    """The file that `GLIMPSE_DICOMWEB_SERVERS` names."""

    model_config = ConfigDict(extra="forbid")

    servers: dict[Annotated[str, Field(pattern=SERVER_NAME_PATTERN)], DicomwebServer] = Field(
        default_factory=dict
    )


class DicomwebConfigError(ValueError):
    """The servers file is missing or malformed (names the file, never a secret)."""


@lru_cache(maxsize=8)
def load_dicomweb_servers(path: Path | None) -> DicomwebServers:
    """The servers configured in `path` (none without a file), read once per process."""
    if path is None:
        return DicomwebServers()
    try:
        return DicomwebServers.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise DicomwebConfigError(f"cannot read the DICOMweb servers file {path}") from exc
    except ValidationError as exc:
        fields = "; ".join(
            ".".join(str(part) for part in error["loc"]) + ": " + error["msg"]
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise DicomwebConfigError(f"the DICOMweb servers file {path} is invalid: {fields}") from exc


class DicomwebSource(BaseModel):
    """`source`: an instance to fetch by WADO-RS from a configured server, instead of `image`."""

    model_config = ConfigDict(extra="forbid")

    dicomweb: ServerName = Field(description="a server name from the configured servers file")
    study: Uid
    series: Uid
    instance: Uid
    frame: int = Field(default=0, ge=0, description="frame of a multi-frame instance, from 0")

    def describe(self) -> str:
        """The reference as an error names it to the caller who gave it."""
        return f"study {self.study}, series {self.series}, instance {self.instance}"


class DicomwebStore(BaseModel):
    """`store`: send the derived DICOM objects to a configured server by STOW-RS."""

    model_config = ConfigDict(extra="forbid")

    dicomweb: ServerName = Field(description="a server name from the configured servers file")


class StoredInstance(BaseModel):
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    kind: DerivedKind


class StoredObjects(BaseModel):
    """What a `store` request sent, as the server acknowledged it."""

    dicomweb: str
    instances: list[StoredInstance]
