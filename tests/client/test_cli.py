"""The command line's parsing, exit codes and help, without a service."""

import argparse
import subprocess
import sys
from pathlib import Path

import glimpse_client as g
import pytest
from glimpse_client.batch import output_folders
from glimpse_client.cli import COMMANDS, Exit, exit_code, main, parse_param, parse_target
from glimpse_client.errors import problem_error


@pytest.mark.parametrize(
    ("text", "target"),
    [("top1", "top1"), ("top3", "top3"), ("2", 2), ("0,2", [0, 2]), ('{"class": 3}', {"class": 3})],
)
def test_targets(text: str, target: object) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["1,x", "{not json"])
def test_bad_targets(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_target(text)


def test_params_are_json_values_or_text() -> None:
    assert parse_param("smoothgrad.samples=10") == ("smoothgrad", "samples", 10)
    assert parse_param("saliency.abs=false") == ("saliency", "abs", False)
    assert parse_param("gradcam.layer=features.4") == ("gradcam", "layer", "features.4")
    for bad in ("samples=10", "smoothgrad.samples", ".x=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_param(bad)


@pytest.mark.parametrize(
    ("status", "slug", "code"),
    [
        (400, "bad-image", Exit.REFUSED),
        (401, "unauthenticated", Exit.REFUSED),
        (404, "not-found", Exit.REFUSED),
        (422, "invalid-request", Exit.REFUSED),
        (429, "rate-limited", Exit.UNAVAILABLE),
        (429, "queue-full", Exit.UNAVAILABLE),
        (500, "attribution-failed", Exit.UNAVAILABLE),
        (503, "unavailable", Exit.UNAVAILABLE),
        (504, "timeout", Exit.UNAVAILABLE),
    ],
)
def test_exit_codes_say_what_failed(status: int, slug: str, code: Exit) -> None:
    error = problem_error(status, {"type": f"urn:glimpse:problem:{slug}"})
    assert exit_code(error) == code
    assert exit_code(g.JobFailed("j", error)) == code
    assert exit_code(g.Unreachable("refused", status=None)) == Exit.UNAVAILABLE


def test_repeated_image_names_get_folders_of_their_own(tmp_path: Path) -> None:
    images = [Path("a/scan.png"), Path("b/scan.png"), Path("c/scan.jpg"), Path("other.png")]
    folders = output_folders(images, tmp_path)
    assert [folder.name for folder in folders.values()] == ["scan", "scan-2", "scan-3", "other"]


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS), ["jobs", "get"]])
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as shown:
        main([*command, "--help"], prog="glimpse")
    assert shown.value.code == 0
    assert capsys.readouterr().out.startswith(" ".join(["usage: glimpse", *command]))


def test_the_client_runs_as_a_module_of_its_own() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "glimpse_client.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: glimpse-client")
    assert "Exit codes" in shown.stdout


def test_explain_help_names_its_options() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "service.cli", "explain", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.stdout.startswith("usage: glimpse explain")
    for option in ("--model", "--method", "--target", "--param", "--output-dir", "--url", "--key"):
        assert option in shown.stdout


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as missing:
        main(["explain", str(tmp_path / "absent.png"), "--model", "m", "-o", str(tmp_path)])
    assert missing.value.code == Exit.USAGE
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as no_model:
        main(["explain", str(tmp_path), "-o", str(tmp_path)])
    assert no_model.value.code == Exit.USAGE
