"""Weighted soft Dice against soft (probability) targets: class balancing for online learning."""

from __future__ import annotations

import torch
from torch import nn


class SoftDiceLoss(nn.Module):
    """L = 1 − mean_{c ∈ K} (2·Σ_i w_i p_{c,i} t_{c,i} + ε) / (Σ_i w_i p_{c,i} + Σ_i w_i t_{c,i} + ε),
    p = softmax(logits), sums over every pixel i of the batch (batch Dice).

    forward(logits (B, C, H, W), target (B, C, H, W) probabilities (each pixel sums to 1),
    weight (B, H, W) in [0, 1] or None (= all ones)) -> scalar in [0, 1].

    K: the classes ``first_class`` .. C−1 (default 1: the foreground classes; the background
    dominates every slice and needs no balancing) whose weighted target mass Σ_i w_i t_{c,i}
    is at least ``min_mass`` pixels, so a class absent from the batch adds neither a constant
    nor a gradient; with no such class the loss is 0 (still part of the graph). Every class
    in K counts equally whatever its size, which is what lifts small structures that plain
    cross-entropy leaves to the background early in training.
    """

    def __init__(self, first_class: int = 1, eps: float = 1.0, min_mass: float = 1.0) -> None:
        super().__init__()
        if first_class < 0:
            raise ValueError(f"first_class must not be negative, got {first_class}")
        self.first_class = first_class
        self.eps = eps
        self.min_mass = min_mass

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if target.shape != logits.shape:
            raise ValueError(f"target {tuple(target.shape)} must match logits {tuple(logits.shape)}")
        probs = torch.softmax(logits.float(), dim=1)[:, self.first_class :]
        target = target.to(probs.dtype)[:, self.first_class :]
        if weight is not None:
            w = weight.to(probs.dtype)[:, None]
            probs_w, target_w = probs * w, target * w
        else:
            probs_w, target_w = probs, target
        dims = (0, 2, 3)
        intersection = (probs_w * target).sum(dim=dims)
        target_mass = target_w.sum(dim=dims)
        dice = (2.0 * intersection + self.eps) / (probs_w.sum(dim=dims) + target_mass + self.eps)
        present = target_mass >= self.min_mass
        if not bool(present.any()):
            return logits.sum() * 0.0
        return 1.0 - dice[present].mean()
