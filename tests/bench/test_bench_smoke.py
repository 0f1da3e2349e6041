"""The benchmarks at tiny sizes, in seconds, so that they cannot rot: each prints its tables with
a figure and a ratio on every line."""

import re

import pytest

from bench import precision, shared_passes

NUMBER = r"[0-9]+\.[0-9]+(e[-+][0-9]+)?"


def test_the_shared_passes_bench_prints_every_method_and_the_request_of_three(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shared_passes.main(["--model", "resnet18", "--size", "32", "--batch", "2", "--repeats", "1"])

    printed = capsys.readouterr().out
    assert re.search(
        rf"floor: forward {NUMBER} maps/s, forward \+ input gradient {NUMBER}", printed
    )
    for method in shared_passes.SINGLE:
        assert re.search(rf"^{method}( +{NUMBER}){{6}}$", printed, re.M)
    assert re.search(rf"in one request: {NUMBER} s .*\(ratio {NUMBER}, target <= 1.3\)", printed)


def test_the_precision_bench_prints_each_methods_deviation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    precision.main(["--size", "32", "--batch", "1", "--methods", "saliency", "gradcam"])

    printed = capsys.readouterr().out
    for method in ("saliency", "gradcam"):
        assert re.search(rf"^{method} +{NUMBER} +{NUMBER} +{NUMBER}$", printed, re.M)
