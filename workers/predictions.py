"""A classifier's logits to the probabilities its predictions report, as its manifest says."""

import torch

from schemas.models import OutputActivation


def class_probabilities(logits: torch.Tensor, activation: OutputActivation) -> torch.Tensor:
    """(N, classes) probabilities of (N, classes) logits: softmax over the labels, a sigmoid per
    label (multi-label), or the logits themselves (`none`)."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "none":
        return logits
    return torch.softmax(logits, dim=1)
