"""What bounds the forward-only methods' float32 arithmetic: the logits their passes meet, and how
far two runtimes' logits for the same inputs are apart."""

from collections.abc import Callable

import torch


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
