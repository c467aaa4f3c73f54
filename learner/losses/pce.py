"""Partial cross-entropy: cross-entropy on scribbled pixels only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from registration.io.volume import UNLABELLED


class PartialCrossEntropyLoss(nn.Module):
    """pCE = (1 / |L|) * sum_{i in L} -log softmax(logits_i)[y_i],  L = {i : y_i != ignore_index}.

    forward(logits (B, C, H, W) float, scribble (B, H, W) long with labels in [0, C) or
    ``ignore_index``) -> scalar >= 0. When no pixel is labelled the result is 0 and still
    part of the graph, so a batch without scribbles does not break ``backward()``.
    """

    def __init__(self, ignore_index: int = UNLABELLED) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, scribble: torch.Tensor) -> torch.Tensor:
        labelled = scribble != self.ignore_index
        count = labelled.sum()
        if count == 0:
            return logits.sum() * 0.0
        total = F.cross_entropy(
            logits, scribble.long(), ignore_index=self.ignore_index, reduction="sum"
        )
        return total / count
