"""The cooperative deadline that long methods check between their passes."""

import time

import pytest
import torch

from workers.deadline import DeadlineExceeded, check_deadline, deadline
from workers.methods import explain


def test_no_deadline_never_raises() -> None:
    check_deadline()


def test_the_check_raises_only_once_the_deadline_has_passed() -> None:
    with deadline(0.05):
        check_deadline()
        time.sleep(0.06)
        with pytest.raises(DeadlineExceeded):
            check_deadline()
    check_deadline()


def test_an_inner_deadline_cannot_outlast_the_outer_one() -> None:
    with deadline(0.0), deadline(60.0):
        time.sleep(0.001)
        with pytest.raises(DeadlineExceeded):
            check_deadline()


def test_a_long_method_stops_between_its_passes() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
    inputs = torch.zeros((1, 1, 4, 4))
    with deadline(0.0), pytest.raises(DeadlineExceeded):
        explain(
            "rise",
            model,
            inputs,
            torch.tensor([0]),
            {"masks": 100, "batch_size": 1},
            cam_layer="1",
        )
