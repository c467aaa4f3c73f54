"""Masked gated CRF loss: a dense-CRF pairwise energy restricted to unlabelled pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from learner.losses.window import half_window_offsets, pair_regions


def _pair_gate(
    image: torch.Tensor,
    mask: torch.Tensor,
    dy: int,
    dx: int,
    spacing: float,
    sigma_xy: float,
    sigma_intensity: float,
) -> torch.Tensor:
    """(m_i + m_j) * k_ij for every pair (i, j = i + (dy, dx)) inside the map -> (B, h', w').

    The ordered pairs (i, j) and (j, i) share the kernel value, so one unordered visit with
    weight m_i + m_j counts both."""
    first, second = pair_regions(image.shape[-2], image.shape[-1], dy, dx)
    contrast = (image[(..., *first)] - image[(..., *second)]).square_()
    contrast = contrast.sum(dim=1) if contrast.shape[1] > 1 else contrast[:, 0]
    spatial = -((dy * dy + dx * dx) * spacing * spacing) / (2.0 * sigma_xy**2)
    kernel = contrast.mul_(-0.5 / sigma_intensity**2).add_(spatial).exp_()
    return kernel.mul_(mask[(..., *first)] + mask[(..., *second)])


class _GatedPairDisagreement(torch.autograd.Function):
    """sum over unordered window pairs of (m_i + m_j) k_ij (1 - p_i . p_j); gradient into probs.

    The energy is quadratic in p, so one pass over the offsets gives both the value and the
    exact gradient dE/dp_i = -sum_{pairs (i, j)} gate_ij p_j (the CRF "message"), accumulated
    in place into one (B, C, H, W) tensor: nothing per offset is kept for backward."""

    @staticmethod
    def forward(ctx, probs, image, mask, radius, spacing, sigma_xy, sigma_intensity):
        height, width = probs.shape[-2:]
        gate_total = probs.new_zeros(())
        message = torch.zeros_like(probs)  # sum over partners j of gate_ij p_j
        for dy, dx in half_window_offsets(radius):
            first, second = pair_regions(height, width, dy, dx)
            gate = _pair_gate(image, mask, dy, dx, spacing, sigma_xy, sigma_intensity)
            gate_total += gate.sum()
            gate = gate.unsqueeze(1)
            message[(..., *first)].addcmul_(gate, probs[(..., *second)])
            message[(..., *second)].addcmul_(gate, probs[(..., *first)])
        # Each unordered pair appears twice in sum_i p_i . message_i.
        total = gate_total - 0.5 * (probs * message).sum()
        ctx.save_for_backward(message)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (message,) = ctx.saved_tensors
        return -grad_total * message, None, None, None, None, None, None


class MaskedGatedCRFLoss(nn.Module):
    """E = (1 / sum_i m_i) * sum_i m_i * sum_{j in Win(i), j != i} k_ij * (1 - p_i . p_j)

    k_ij = exp(-|u_i - u_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_intensity^2)),
    Win(i) the (2r+1) x (2r+1) window around i clipped to the image, u pixel coordinates
    (in input pixels), m_i = 1 on unlabelled pixels, 0 on scribbled ones.

    forward(probs (B, C, H, W) softmax probabilities, image (B, K, H, W) intensities on the scale
    sigma_intensity refers to (normalised to ~[0, 1]; |I_i - I_j|^2 sums the K channels),
    unlabelled (B, H, W) bool) -> scalar in [0, sum_{o != 0} exp(-|o|^2 / 2 sigma_xy^2)]
    (about 92 for r = 5, sigma_xy = 6). 0 for a constant one-hot prediction; 0 (in the graph)
    when no pixel is unlabelled. Gradients flow into ``probs`` only.

    ``downsample`` = f > 1 average-pools probs, image and mask by f first (as the gated CRF
    paper does to save time); the window radius then counts pooled pixels, distances stay in
    input pixels, and m_i becomes the unlabelled fraction of the pooled cell.
    Memory: a few (B, C, H, W) tensors; pairs are visited offset by offset, never as N x N.
    """

    def __init__(
        self,
        radius: int = 5,
        sigma_xy: float = 6.0,
        sigma_intensity: float = 0.1,
        downsample: int = 1,
    ) -> None:
        super().__init__()
        if downsample < 1:
            raise ValueError("downsample must be >= 1")
        self.radius = radius
        self.sigma_xy = sigma_xy
        self.sigma_intensity = sigma_intensity
        self.downsample = downsample

    def forward(
        self, probs: torch.Tensor, image: torch.Tensor, unlabelled: torch.Tensor
    ) -> torch.Tensor:
        if (
            probs.ndim != 4
            or image.ndim != 4
            or unlabelled.shape != probs.shape[:1] + probs.shape[2:]
        ):
            raise ValueError(
                "expected probs (B, C, H, W), image (B, K, H, W), unlabelled (B, H, W)"
            )
        if image.shape[0] != probs.shape[0] or image.shape[-2:] != probs.shape[-2:]:
            raise ValueError("image must share batch, height and width with probs")
        mask = unlabelled.to(probs.dtype).unsqueeze(1)
        image = image.detach().to(probs.dtype)
        factor = self.downsample
        if factor > 1:
            probs, image, mask = (F.avg_pool2d(t, factor) for t in (probs, image, mask))
        mask = mask[:, 0]
        normaliser = mask.sum()
        if normaliser <= 0:
            return probs.sum() * 0.0
        energy = _GatedPairDisagreement.apply(
            probs, image, mask, self.radius, float(factor), self.sigma_xy, self.sigma_intensity
        )
        return energy / normaliser


def crf_kernel_mass(radius: int = 5, sigma_xy: float = 6.0) -> float:
    """sum_{o != 0, |o|_inf <= r} exp(-|o|^2 / 2 sigma^2): the largest per-pixel CRF energy."""
    return sum(
        math.exp(-(dy * dy + dx * dx) / (2.0 * sigma_xy**2))
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy or dx
    )
