"""`glimpse serve --help` and `glimpse-worker --help` list every setting's variable and default."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from service.config import Settings
from workers.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
HELP_COMMANDS: list[tuple[type[BaseSettings], list[str]]] = [
    (Settings, ["-m", "service.cli", "serve", "--help"]),
    (WorkerSettings, ["-m", "workers.cli", "--help"]),
]


def clean_environment() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_") and k != "REDIS_URL"
    }


def clear_settings_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GLIMPSE_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


def help_rows(arguments: list[str]) -> dict[str, str]:
    """Variable names → the default printed beside them."""
    result = subprocess.run(
        [sys.executable, *arguments],
        env={**clean_environment(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    _, _, table = result.stdout.partition("environment variables (name, default, meaning):\n")
    rows = {}
    for line in table.splitlines():
        match = re.match(r"^  ((?:[A-Z_]+, )*[A-Z_]+)  +(\S+(?: \S+)*)", line)
        assert match, f"not a variable row: {line!r}"
        rows[match.group(1)] = match.group(2)
    return rows


def expected_default(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


@pytest.mark.parametrize(("settings_class", "arguments"), HELP_COMMANDS)
def test_help_lists_every_setting_with_its_default(
    settings_class: type[BaseSettings], arguments: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = help_rows(arguments)
    clear_settings_environment(monkeypatch)
    defaults = settings_class()

    printed = {}
    for field in settings_class.model_fields:
        variable = "REDIS_URL, GLIMPSE_REDIS_URL" if field == "redis_url" else f"GLIMPSE_{field}"
        assert variable.upper() in rows, f"{field} is not in the help:\n{rows}"
        printed[field] = rows[variable.upper()]
    assert len(rows) == len(settings_class.model_fields)

    for field, default in printed.items():
        if field == "worker_id":
            assert default == "(computed per process)"
        else:
            assert default == expected_default(getattr(defaults, field)), field


@pytest.mark.parametrize(("settings_class", "arguments"), HELP_COMMANDS)
def test_each_printed_default_set_in_its_variable_gives_the_default(
    settings_class: type[BaseSettings], arguments: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = help_rows(arguments)
    clear_settings_environment(monkeypatch)
    defaults = settings_class().model_dump(exclude={"worker_id"})

    for names, default in rows.items():
        if not default.startswith("("):
            monkeypatch.setenv(names.split(", ")[0], default)

    assert settings_class().model_dump(exclude={"worker_id"}) == defaults


def test_worker_help_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "from workers.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean_environment(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
