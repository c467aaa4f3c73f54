"""Class-wise contrastive regularisation of decoder features (ScribSD+)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from registration.io.volume import UNLABELLED


class ClassContrastiveLoss(nn.Module):
    """Pull each pixel's feature towards its class prototype, away from the other prototypes.

    Pixel pseudo-labels: the scribble where there is one, else argmax p when max p >= confidence,
    else none. f_i = features_i / |features_i|; prototype mu_c = normalised mean of f over the
    batch's pixels of class c (detached: a target, not a path for gradients). With K >= 2
    classes present and up to ``max_pixels_per_class`` pixels drawn at random per class:

        L = mean_i -log( exp(f_i . mu_{y_i} / tau) / sum_{c present} exp(f_i . mu_c / tau) )

    forward(features (B, F, H, W), probs (B, C, H, W) softmax probabilities (used without
    gradient), scribble (B, H, W) long, ``ignore_index`` = none) -> scalar in [0, log K + 2/tau];
    0 (in the graph) when fewer than two classes are present. Random sampling uses torch's
    global generator (seed it for reproducibility).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        confidence: float = 0.8,
        max_pixels_per_class: int = 256,
        ignore_index: int = UNLABELLED,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.confidence = confidence
        self.max_pixels_per_class = max_pixels_per_class
        self.ignore_index = ignore_index

    @torch.no_grad()
    def pseudo_labels(self, probs: torch.Tensor, scribble: torch.Tensor) -> torch.Tensor:
        """(B, H, W) long: scribble label, confident argmax, or -1 for no label."""
        max_prob, argmax = probs.max(dim=1)
        labels = torch.where(max_prob >= self.confidence, argmax, torch.full_like(argmax, -1))
        scribbled = scribble != self.ignore_index
        return torch.where(scribbled, scribble.long(), labels)

    def forward(
        self, features: torch.Tensor, probs: torch.Tensor, scribble: torch.Tensor
    ) -> torch.Tensor:
        if (
            features.shape[-2:] != probs.shape[-2:]
            or scribble.shape != probs.shape[:1] + probs.shape[2:]
        ):
            raise ValueError("features, probs and scribble must share (B, H, W)")
        labels = self.pseudo_labels(probs.detach(), scribble).reshape(-1)
        present = [c for c in range(probs.shape[1]) if bool((labels == c).any())]
        if len(present) < 2:
            return features.sum() * 0.0
        # Pixel p of the flattened (B, H, W) grid is column p % HW of batch item p // HW.
        # Only the sampled anchors carry gradients, so only they are normalised in the graph;
        # the prototypes (all pixels of a class) are computed without one.
        per_item = features.flatten(2)  # (B, F, HW)
        pixels = per_item.shape[-1]

        def pixel_features(source: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            return source[indices // pixels, :, indices % pixels]  # (n, F)

        with torch.no_grad():
            normalised = F.normalize(per_item.detach(), dim=1)
        prototypes, chosen, targets = [], [], []
        for slot, cls in enumerate(present):
            indices = torch.nonzero(labels == cls).squeeze(1)
            prototypes.append(F.normalize(pixel_features(normalised, indices).mean(dim=0), dim=0))
            if indices.numel() > self.max_pixels_per_class:
                pick = torch.randperm(indices.numel(), device=indices.device)[
                    : self.max_pixels_per_class
                ]
                indices = indices[pick]
            chosen.append(indices)
            targets.append(torch.full_like(indices, slot))
        anchors = F.normalize(pixel_features(per_item, torch.cat(chosen)), dim=1)
        logits = anchors @ torch.stack(prototypes).t().to(anchors.dtype) / self.temperature
        return F.cross_entropy(logits, torch.cat(targets))
