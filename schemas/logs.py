"""Log lines of the gateway and the workers: JSON objects, or plain text for a terminal.

Both sides log through the standard library and format each record here, so that a line from
either names the same things with the same keys: `time`, `level`, `logger`, `event` (the
message), then those of `LogFields` that apply. Fields are given per record
(`log.info(…, extra=log_fields(job_id=…))`) or, for everything logged while a request is being
answered, by `log_context(request_id=…)`. Values that could carry an image, a body, a score
array, a key or a DICOM header value are never given as fields.
"""

import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, Unpack

LogFormat = Literal["auto", "json", "text"]

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")

# The record attribute that carries a record's own fields (`log_fields`).
_FIELDS_ATTRIBUTE = "glimpse_fields"
# Fields a text line shows after the message; the message itself says the rest.
_TEXT_FIELDS = ("request_id",)


class LogFields(TypedDict, total=False):
    """What a line may say beyond its message."""

    request_id: str
    job_id: str
    model: str
    methods: list[str]
    status: str | int
    problem: str
    timings: Mapping[str, float]
    duration_ms: float
    method: str
    path: str
    client: str


_context: ContextVar[LogFields | None] = ContextVar("glimpse_log_context", default=None)


def log_fields(**fields: Unpack[LogFields]) -> dict[str, object]:
    """`extra=` for one record: `log.info("…", extra=log_fields(job_id=job_id))`."""
    return {_FIELDS_ATTRIBUTE: fields}


@contextlib.contextmanager
def log_context(**fields: Unpack[LogFields]) -> Iterator[None]:
    """Every record logged inside the block (in this task or thread) carries `fields`."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def is_valid_request_id(value: str) -> bool:
    """Printable and bounded: up to `MAX_REQUEST_ID_LENGTH` of `A–Z a–z 0–9 . _ : -`."""
    return _REQUEST_ID.fullmatch(value) is not None


def request_id_from(value: str | None) -> str:
    """The caller's request id when it is valid, else a new one."""
    if value is not None and is_valid_request_id(value):
        return value
    return uuid.uuid4().hex


def _fields_of(record: logging.LogRecord) -> dict[str, object]:
    own: Mapping[str, object] = getattr(record, _FIELDS_ATTRIBUTE, {})
    return {**(_context.get() or {}), **own}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line; a traceback goes in `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **_fields_of(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextLineFormatter(logging.Formatter):
    """`time LEVEL logger message  request_id=…`, for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        fields = _fields_of(record)
        ids = " ".join(f"{name}={fields[name]}" for name in _TEXT_FIELDS if name in fields)
        line = super().formatMessage(record)
        return f"{line}  {ids}" if ids else line


def resolve_format(log_format: LogFormat, stream: Any = None) -> Literal["json", "text"]:
    """`auto` is text when `stream` (standard error by default) is a terminal, else JSON."""
    if log_format != "auto":
        return log_format
    stream = sys.stderr if stream is None else stream
    return "text" if stream.isatty() else "json"


def line_formatter(log_format: LogFormat = "auto") -> logging.Formatter:
    """The formatter for `log_format`; named by `logging_config` as a `()` factory."""
    return JsonLineFormatter() if resolve_format(log_format) == "json" else TextLineFormatter()


def logging_config(log_format: LogFormat) -> dict[str, Any]:
    """A `logging.config.dictConfig` configuration: every record at INFO or above, to standard
    error, in `log_format`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": "schemas.logs.line_formatter", "log_format": log_format}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
    }
