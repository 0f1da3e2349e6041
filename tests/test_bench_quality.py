"""A seconds-long run of the explanation-quality benchmark (`bench/quality.py`), so it cannot rot:
two methods, both formats, a handful of held-out images."""

import math

import torch

from bench.quality import DEMO, main
from workers.faithfulness import randomisation_cuts
from workers.repository import load_model


def test_quality_benchmark_prints_every_figure_for_both_formats() -> None:
    report = main(
        [
            "--images", "6",
            "--curve-images", "2",
            "--randomisation-images", "2",
            "--methods", "gradcam", "guided_backprop",
            "--formats", "safetensors", "onnx",
        ]
    )  # fmt: skip
    cuts = randomisation_cuts(load_model(DEMO, torch.device("cpu")).module)
    assert cuts[0] == "classifier" and len(cuts) == 5
    rows = [line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert [cell.strip() for cell in header[8 : 9 + len(cuts)]] == [
        *(f"ρ {cut}" for cut in cuts),
        "ρ images",
    ]
    assert [(r[0].strip(), r[1].strip()) for r in body] == [
        ("gradcam", "safetensors"),
        ("guided_backprop", "safetensors"),
        ("gradcam", "onnx"),
        ("guided_backprop", "onnx"),
    ]
    for row in body:
        values = [float(cell) for cell in row[2:]]
        assert len(values) == len(header) - 2
        pointing, mass, _, deletion, insertion, drop = values[:6]
        assert all(0.0 <= v <= 1.0 for v in (pointing, mass, deletion, insertion))
        assert -1.0 <= drop <= 1.0
        assert all(math.isnan(r) or -1.0 <= r <= 1.0 for r in values[6 : 6 + len(cuts)])
        assert values[6 + len(cuts)] == 2  # the images of the randomisation check
        maps_ms, _, curves_ms, randomisation_ms = values[-4:]  # localisation may round to 0.0
        assert maps_ms > 0 and curves_ms > 0 and randomisation_ms > 0
    assert "6 held-out images" in report
