"""What bounds the forward-only methods' float32 arithmetic: the logits their passes meet, how far
two runtimes' logits for the same inputs are apart, and what float32 arithmetic on those logits
can move Occlusion's, RISE's and Score-CAM's maps by."""

import math
from collections.abc import Callable

import torch
from method_checks import float32_rounding


class RecordingForward:
    """A forward (a batch's logits, no gradients) that records the largest |logit| it returns and,
    given a `twin`, the largest |logit − twin's logit| on the same batches."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        twin: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.forward = forward
        self.twin = twin
        self.largest_logit = 0.0
        self.twin_gap = 0.0
        self.rows: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.forward(batch)
            if self.twin is not None:
                twin_logits = self.twin(batch).to(logits.dtype)
                self.twin_gap = max(self.twin_gap, float((logits - twin_logits).abs().max()))
                self.largest_logit = max(self.largest_logit, float(twin_logits.abs().max()))
        self.rows.append(batch.shape[0])
        self.largest_logit = max(self.largest_logit, float(logits.abs().max()))
        return logits


def float32_drop_bound(
    expected: torch.Tensor, largest_logit: float, window: int, stride: int, batch_size: int = 64
) -> float:
    """The most `max_relative_deviation` from exact maps `expected` that the method's float32
    arithmetic on logits up to `largest_logit` (L) allows.

    The method rounds both logits of a drop to float32 and subtracts, ≤ 2·eps32·L; sums the drops
    of the n windows covering a pixel in c chunks, ≤ (n − 1 + c)·eps32/2 of Σ|drop| ≤ n·2L; and
    divides by n, once more ≤ eps32/2 · 2L: (n + c + 2)·eps32·L in all.
    """
    height, width = expected.shape[1:]
    starts = [math.ceil((side - min(window, side)) / stride) + 1 for side in (height, width)]
    covering = math.prod(
        min(math.ceil(min(window, side) / stride), count)
        for side, count in zip((height, width), starts, strict=True)
    )
    chunks = math.ceil(math.prod(starts) / batch_size)
    magnitude = torch.full((expected.shape[0], 1), largest_logit)
    return float32_rounding(expected, covering + chunks + 2, magnitude)


def float32_softmax_bound(
    expected: torch.Tensor, magnitude: torch.Tensor, largest_logit: float, classes: int
) -> float:
    """The most `max_relative_deviation` from a float64 Score-CAM map `expected` that the method's
    float32 arithmetic allows, given `magnitude` ≥ Σ_k (p_k + p_0)·|A_k| upsampled like the map.

    The method takes each probability p (p_k on channel k's masked input, p_0 on the zero input)
    as the float32 softmax of the logits: their rounding to float32 moves p by ≤ eps32·Z·p (Z the
    largest |logit|), the shift by the largest logit another eps32·Z·p, exp ≤ 1 ulp, the sum of
    the C exponentials (C − 1)/2 and the division 1/2 eps32·p; w_k = p_k − p_0 rounds once more,
    ≤ eps32/2·(p_k + p_0). So |Δw_k| ≤ (2Z + C/2 + 1)·eps32·(p_k + p_0), and the map moves by at
    most Σ_k |Δw_k|·|A_k| (the ReLU and the bilinear upsampling enlarge no difference), then by
    its own rounding to float32.
    """
    roundings = math.ceil(2 * largest_logit + classes / 2 + 1)
    return float32_rounding(expected, roundings, magnitude) + float32_rounding(expected, 1)


def float32_rise_bound(
    expected: torch.Tensor, largest_logit: float, classes: int, masks: int, batch_size: int = 64
) -> float:
    """The most `max_relative_deviation` from exact maps `expected` that the method's float32
    arithmetic on logits up to `largest_logit` (Z) allows, for the same masks.

    Each probability is a float32 softmax of logits rounded to float32: ≤ (2Z + C/2 + 1)·eps32 of
    itself (as in `float32_softmax_bound`). The map sums p·m over the masks, all terms ≥ 0: the
    products and the sums in c chunks ≤ (masks + c)·eps32/2 of the map's value, and the division by
    masks·p ≤ 2·eps32/2 more.
    """
    chunks = math.ceil(masks / batch_size)
    roundings = math.ceil(2 * largest_logit + classes / 2 + 1 + (masks + chunks + 2) / 2)
    return float32_rounding(expected, roundings)
