"""The benchmarks at tiny sizes, in seconds, so that they cannot rot: each prints its tables with
a figure and a ratio on every line."""

import math
import re

import pytest

from bench import precision, shared_passes, side_by_side

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


def positive_figures(line: str) -> list[float]:
    """The figures of a printed line; each must be finite and positive."""
    figures = [float(match[0]) for match in re.finditer(NUMBER, line)]
    assert figures and all(math.isfinite(f) and f > 0 for f in figures), line
    return figures


def test_the_side_by_side_suite_prints_every_table_with_finite_positive_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    side_by_side.main(["--smoke"])

    printed = capsys.readouterr().out
    assert re.search(r"^machine: .+, [0-9]+ cores", printed, re.M)
    assert "command: python -m bench.side_by_side --smoke" in printed
    assert "refused" not in printed
    gradcam = re.search(
        r"^\| gradcam \| .* \| (Captum LayerGradCam|pytorch-grad-cam GradCAM) \| .*\|$",
        printed,
        re.M,
    )
    assert gradcam is not None
    # service, Captum, pytorch-grad-cam, service / best
    assert len(positive_figures(gradcam[0])) == 4
    lrp = re.search(r"^\| lrp \|.*\|$", printed, re.M)
    assert lrp is not None
    # service, Captum, zennit, service / best
    assert len(positive_figures(lrp[0])) == 4
    floor = re.search(r"^floor: forward .* maps/s$", printed, re.M)
    assert floor is not None and len(positive_figures(floor[0])) == 2
    over_floor = re.findall(r"^\| gradcam \| [^|]+ \| [^|]+ \|$", printed, re.M)
    assert len(over_floor) == 1 and len(positive_figures(over_floor[0])) == 2
    trio = re.search(r"^gradcam \+ saliency \+ guided_gradcam in one request: .*$", printed, re.M)
    assert trio is not None and len(positive_figures(trio[0])) == 5
    memory = re.search(r"^worker memory: peak \(VmHWM\) .* MiB$", printed, re.M)
    assert memory is not None and len(positive_figures(memory[0])) == 2
    workers = re.search(r"^\| gradcam \| [^|]+ \| [^|]+ \| [^|]+ \|$", printed, re.M)
    assert workers is not None and len(positive_figures(workers[0])) == 3
