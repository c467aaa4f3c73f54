"""Confidence-weighted cross-entropy against soft (probability) targets."""

from __future__ import annotations

import torch
from torch import nn


class SoftTargetCrossEntropyLoss(nn.Module):
    """L = sum_i w_i * (-sum_c t_{c,i} log p_{c,i}) / max(sum_i w_i, eps),  p = softmax(logits).

    forward(logits (B, C, H, W), target (B, C, H, W) probabilities (each pixel sums to 1),
    weight (B, H, W) in [0, 1] or None (= all ones)) -> scalar >= 0.
    With one-hot targets and unit weights it is the ordinary cross-entropy; with all weights 0
    it is 0. Used for proxy masks with label smoothing, target = (1 - w) P_prev + w Y_proxy.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if target.shape != logits.shape:
            raise ValueError(
                f"target {tuple(target.shape)} must match logits {tuple(logits.shape)}"
            )
        per_pixel = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)  # (B, H, W)
        if weight is None:
            weight = torch.ones_like(per_pixel)
        weight = weight.to(per_pixel.dtype)
        return (weight * per_pixel).sum() / weight.sum().clamp_min(self.eps)
