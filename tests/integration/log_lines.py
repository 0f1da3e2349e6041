"""The log lines a test stack's processes wrote: each must be one JSON object."""

import json
from collections.abc import Iterator
from pathlib import Path

LINE_KEYS = frozenset({"time", "level", "logger", "event"})


def log_lines(log_dir: Path) -> dict[str, list[dict[str, object]]]:
    """Each process's lines (by log file name), every one parsed as a JSON object with at
    least `LINE_KEYS`; an assertion names the first line that is not."""
    parsed = {}
    for path in sorted(log_dir.glob("*.log")):
        lines = []
        for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                raise AssertionError(f"{path.name}:{number} is not JSON: {text}") from None
            assert isinstance(line, dict), f"{path.name}:{number} is not an object: {text}"
            assert line.keys() >= LINE_KEYS, f"{path.name}:{number} lacks {LINE_KEYS}: {text}"
            lines.append(line)
        parsed[path.stem] = lines
    return parsed


def strings_in(value: object) -> Iterator[str]:
    """Every key and string value of a parsed line, decoded from JSON's escapes."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def logged_text(log_dir: Path) -> str:
    """Everything the lines say, decoded, one string per line: what a search of a log store
    would find."""
    return "\n".join(
        " ".join(strings_in(line)) for lines in log_lines(log_dir).values() for line in lines
    )
