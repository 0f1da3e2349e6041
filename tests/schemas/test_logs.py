"""Log lines: one JSON object per record (text at a terminal), fields given per record or by
context, and request ids taken from callers only when they are short and printable."""

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from schemas.logs import (
    MAX_REQUEST_ID_LENGTH,
    JsonLineFormatter,
    TextLineFormatter,
    is_valid_request_id,
    log_context,
    log_fields,
    request_id_from,
    resolve_format,
)

ROOT = Path(__file__).resolve().parents[2]


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    """A record as `Logger.info(message, *args, extra=extra)` makes it."""
    logger = logging.getLogger("glimpse.test")
    return logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, message, args, None, extra=extra or None
    )


def test_a_json_line_names_time_level_logger_event_and_the_fields_given() -> None:
    made = record("job %s queued", "j1", **log_fields(job_id="j1", methods=["gradcam"]))

    line = JsonLineFormatter().format(made)

    parsed = json.loads(line)
    assert parsed == {
        "time": parsed["time"],
        "level": "INFO",
        "logger": "glimpse.test",
        "event": "job j1 queued",
        "job_id": "j1",
        "methods": ["gradcam"],
    }
    # Written to the millisecond, truncated: at most 1 ms before the record's own time.
    written = datetime.fromisoformat(parsed["time"]).timestamp()
    assert 0 <= made.created - written < 1e-3
    assert datetime.fromisoformat(parsed["time"]).utcoffset() is not None


def test_a_json_line_stays_one_line_and_carries_its_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        made = logging.getLogger("glimpse.test").makeRecord(
            "glimpse.test", logging.ERROR, __file__, 1, "two\nlines", (), sys.exc_info()
        )

    line = JsonLineFormatter().format(made)

    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["event"] == "two\nlines"
    assert parsed["level"] == "ERROR"
    assert "Traceback" in parsed["exception"] and "ValueError: bad" in parsed["exception"]


def test_context_fields_reach_every_record_in_the_block_and_no_other() -> None:
    formatter = JsonLineFormatter()
    with log_context(request_id="r-1"):
        inside = json.loads(formatter.format(record("inside")))
        with log_context(job_id="j-2"):
            nested = json.loads(formatter.format(record("nested")))
        own = json.loads(formatter.format(record("own", **log_fields(request_id="r-9"))))
    outside = json.loads(formatter.format(record("outside")))

    assert inside["request_id"] == "r-1" and "job_id" not in inside
    assert (nested["request_id"], nested["job_id"]) == ("r-1", "j-2")
    assert own["request_id"] == "r-9"  # a record's own field wins over the context's
    assert "request_id" not in outside


def test_a_text_line_is_the_message_with_the_request_id() -> None:
    with log_context(request_id="r-1"):
        line = TextLineFormatter().format(record("job %s queued", "j1", **log_fields(job_id="j1")))

    assert line.endswith(" INFO glimpse.test job j1 queued  request_id=r-1")
    assert not line.startswith("{")


@pytest.mark.parametrize(
    "given",
    [
        "abc-123",
        "01HZX.trace:span_7",
        "a" * MAX_REQUEST_ID_LENGTH,
    ],
)
def test_a_valid_request_id_is_kept(given: str) -> None:
    assert is_valid_request_id(given)
    assert request_id_from(given) == given


@pytest.mark.parametrize(
    "given",
    [
        None,
        "",
        "a" * (MAX_REQUEST_ID_LENGTH + 1),
        "has space",
        "line\nbreak",
        'quote"d',
        "naïve",
        "{}",
    ],
)
def test_an_absent_or_invalid_request_id_is_replaced_by_a_new_one(given: str | None) -> None:
    made = request_id_from(given)

    assert made != given
    assert len(made) == 32 and int(made, 16) >= 0
    assert request_id_from(given) != made


@pytest.fixture()
def terminal() -> Iterator[tuple[int, int]]:
    """Both ends of a real pseudo-terminal."""
    controller, follower = os.openpty()
    yield controller, follower
    os.close(controller)
    os.close(follower)


def test_auto_is_text_on_a_terminal_and_json_elsewhere(
    terminal: tuple[int, int], tmp_path: Path
) -> None:
    with os.fdopen(os.dup(terminal[1]), "w") as tty, (tmp_path / "log").open("w") as file:
        assert resolve_format("auto", tty) == "text"
        assert resolve_format("auto", file) == "json"
        assert resolve_format("json", tty) == "json"
        assert resolve_format("text", file) == "text"


LOG_ONE_LINE = (
    "import logging, logging.config\n"
    "from schemas.logs import logging_config, log_fields\n"
    "logging.config.dictConfig(logging_config({format!r}))\n"
    "logging.getLogger('glimpse.probe').info('hello %s', 'there', "
    "extra=log_fields(job_id='j1'))\n"
    "logging.getLogger('other.library').info('theirs')\n"
)


def run_logging(log_format: str, stderr: int) -> None:
    subprocess.run(
        [sys.executable, "-c", LOG_ONE_LINE.format(format=log_format)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=stderr,
        timeout=60,
        check=True,
    )


def test_the_configuration_writes_json_lines_to_a_pipe(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("wb") as stderr:
        run_logging("auto", stderr.fileno())

    lines = [json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines()]
    assert [(line["logger"], line["event"]) for line in lines] == [
        ("glimpse.probe", "hello there"),
        ("other.library", "theirs"),
    ]
    assert lines[0]["job_id"] == "j1"


def test_the_configuration_writes_text_to_a_terminal(terminal: tuple[int, int]) -> None:
    run_logging("auto", terminal[1])

    written = os.read(terminal[0], 65536).decode()
    lines = written.replace("\r\n", "\n").splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" INFO glimpse.probe hello there")
    assert lines[1].endswith(" INFO other.library theirs")
