"""Logits to the probabilities predictions report, per output activation, against float64."""

import math

import pytest
import torch
from method_checks import EPS32

from workers.predictions import class_probabilities

LOGITS = torch.tensor([[2.0, 0.5, -3.0], [-1.0, 4.0, 0.0]])


def test_sigmoid_gives_each_label_its_own_probability() -> None:
    probabilities = class_probabilities(LOGITS, "sigmoid")

    expected = [[1 / (1 + math.exp(-v)) for v in row] for row in LOGITS.tolist()]
    assert (probabilities.double() - torch.tensor(expected, dtype=torch.float64)).abs().max() <= (
        2 * EPS32
    )
    # Two labels above 0.5 in the first row: multi-label, not one class among several.
    assert (probabilities[0] > 0.5).tolist() == [True, True, False]


def test_softmax_spreads_one_unit_over_the_labels() -> None:
    probabilities = class_probabilities(LOGITS, "softmax")

    for row, logits in zip(probabilities.tolist(), LOGITS.tolist(), strict=True):
        total = sum(math.exp(v) for v in logits)
        for p, v in zip(row, logits, strict=True):
            assert abs(p - math.exp(v) / total) <= 4 * EPS32


def test_none_scores_by_the_logits_themselves() -> None:
    assert torch.equal(class_probabilities(LOGITS, "none"), LOGITS)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
def test_every_activation_keeps_the_order_of_one_images_logits(activation: str) -> None:
    probabilities = class_probabilities(LOGITS, activation)  # type: ignore[arg-type]

    assert torch.equal(probabilities.argsort(dim=1), LOGITS.argsort(dim=1))
