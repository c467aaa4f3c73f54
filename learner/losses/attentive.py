"""Attentive similarity loss (AttenScribble) computed on window pairs only.

The attention block's S = row-softmax(Q K^T) is an N x N matrix (N = 4096 for a 64 x 64 map,
12 x 4096 x 4096 floats = 805 MB per tensor at batch 12, several of them with autograd).
The loss only needs S_ij and S_ji for pixel pairs inside a small window, so this module
computes the row log-normalisers L_i = logsumexp_j(q_i . k_j) chunk by chunk with a custom
autograd function (recomputing the chunks in backward, unless one chunk holds the whole
matrix), and the logits q_i . k_j of window pairs only (:mod:`learner.losses.window`);
then S_ij = exp(q_i . k_j - L_i).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from learner.losses.window import (
    half_window_offsets,
    pair_validity,
    window_pair_dot,
    window_pair_dot_tiled,
)
from learner.networks import AttentionState

#: Bytes of one (rows x N) logits chunk that the row log-normaliser may hold at a time.
_CHUNK_BYTES = 64 * 2**20


class _RowLogSumExp(torch.autograd.Function):
    """L[b, i] = log sum_j exp(q[b, i] . k[b, j]); q (B, N, D), k (B, M, D) -> (B, N), at least float32.

    Forward and backward walk over row chunks; memory O(chunk * M) instead of O(N * M).
    dL_i/dq_i = sum_j s_ij k_j,  dL_i/dk_j = s_ij q_i,  s_ij = exp(q_i . k_j - L_i).
    The matrix products run in the inputs' dtype (bfloat16 under autocast: the attention
    block's own precision, so each logit carries bf16 rounding); the exponentials and sums
    run in float32 at least. When one chunk holds the whole matrix its softmax is kept for
    backward instead of being recomputed.
    """

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, chunk: int) -> torch.Tensor:
        key_t = key.transpose(1, 2)
        accumulate = torch.promote_types(query.dtype, torch.float32)
        out = query.new_empty(query.shape[:2], dtype=accumulate)
        ctx.softmax = None
        with torch.autocast(query.device.type, enabled=False):
            for start in range(0, query.shape[1], chunk):
                rows = slice(start, start + chunk)
                logits = torch.bmm(query[:, rows], key_t).to(accumulate)
                row_max = logits.amax(dim=-1, keepdim=True)
                sums = logits.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
                out[:, rows] = sums.log()[..., 0].add_(row_max[..., 0])
                if chunk >= query.shape[1]:
                    ctx.softmax = logits.div_(sums)
        ctx.save_for_backward(query, key, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable  # the kept softmax has no graph: second derivatives are not offered
    def backward(ctx, grad_out: torch.Tensor):
        query, key, out = ctx.saved_tensors
        chunk = ctx.chunk
        key_t = key.transpose(1, 2)
        grad_query = torch.empty_like(query) if ctx.needs_input_grad[0] else None
        grad_key = torch.zeros_like(key, dtype=out.dtype) if ctx.needs_input_grad[1] else None
        for start in range(0, query.shape[1], chunk):
            rows = slice(start, start + chunk)
            weights, ctx.softmax = ctx.softmax, None  # kept once; a second backward recomputes
            if weights is None:
                weights = torch.bmm(query[:, rows], key_t).to(out.dtype).sub_(out[:, rows, None]).exp_()
            weights = weights.mul_(grad_out[:, rows, None]).to(query.dtype)  # (B, rows, M)
            if grad_query is not None:
                grad_query[:, rows] = torch.bmm(weights, key)
            if grad_key is not None:
                grad_key.add_(torch.bmm(weights.transpose(1, 2), query[:, rows]))
        return grad_query, None if grad_key is None else grad_key.to(key.dtype), None


def row_logsumexp(query: torch.Tensor, key: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """logsumexp_j(query_i . key_j) for query (B, N, D), key (B, M, D) -> (B, N) (float32 at
    least), in row chunks of at most ``_CHUNK_BYTES`` of logits."""
    if chunk is None:
        bytes_per_row = query.shape[0] * key.shape[1] * max(4, query.element_size())
        chunk = max(1, _CHUNK_BYTES // max(1, bytes_per_row))
    return _RowLogSumExp.apply(query, key, int(chunk))


def resize_probs(probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, height, width): area averaging when shrinking, bilinear otherwise.
    Both keep every pixel a probability vector."""
    if probs.shape[-2:] == (height, width):
        return probs
    if height <= probs.shape[-2] and width <= probs.shape[-1]:
        return F.interpolate(probs, size=(height, width), mode="area")
    return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)


class AttentiveSimilarityLoss(nn.Module):
    """Attentive similarity: pixels the attention finds similar should get the same class.

    S = row-softmax(Q K^T) (Q already scaled by the block), W = sigmoid(a (S + S^T) + b),
    G_ij = exp(-|u_i - u_j|^2 / (2 sigma^2)), P = {(i, j) : i != j, |dy|, |dx| <= radius,
    both inside the map} (ordered pairs):

        normalisation="pairs"  (default):  L = (1/|P|) * sum_{(i,j) in P} W_ij G_ij (1 - p_i . p_j)
        normalisation="pixels" (as the AttenScribble code divides): same sum / (B * h * w)

    With several heads S is the mean of the heads' softmax matrices.
    forward(attention: AttentionState (query/key (B, N, D) or (B, heads, N, D), N = h*w),
    probs (B, C, H, W) softmax probabilities, resized inside to h x w) -> scalar in [0, 1] for
    "pairs", [0, sum_{o != 0} G_o] (about 92 for radius 5, sigma 6) for "pixels".
    Gradients flow into query, key, a, b and probs. No dense label is used. The N x N matrix is
    never formed: row normalisers are computed in chunks, logits only for window pairs.
    """

    def __init__(
        self,
        radius: int = 5,
        sigma: float = 6.0,
        normalisation: Literal["pairs", "pixels"] = "pairs",
    ) -> None:
        super().__init__()
        if normalisation not in ("pairs", "pixels"):
            raise ValueError("normalisation must be 'pairs' or 'pixels'")
        self.radius = radius
        self.sigma = sigma
        self.normalisation = normalisation

    def forward(self, attention: AttentionState, probs: torch.Tensor) -> torch.Tensor:
        height, width = attention.height, attention.width
        query, key = attention.query, attention.key
        if query.ndim == 3:
            query, key = query.unsqueeze(1), key.unsqueeze(1)
        batch, heads, n, dim = query.shape
        if n != height * width or key.shape != query.shape:
            raise ValueError(
                f"query/key {tuple(query.shape)} do not match a {height} x {width} map"
            )
        offsets = half_window_offsets(self.radius)
        valid = pair_validity(height, width, offsets, device=probs.device)  # (O, h, w)
        if not bool(valid.any()):  # a one-pixel map has no pairs
            return (probs.sum() + attention.scale + attention.bias) * 0.0

        # float32 at least: the normalisers and the exp of logits are not safe in half precision.
        work_dtype = torch.promote_types(query.dtype, torch.float32)
        flat_query = query.reshape(batch * heads, n, dim)
        flat_key = key.reshape(batch * heads, n, dim)
        log_norm = row_logsumexp(flat_query, flat_key).to(work_dtype).reshape(batch * heads, 1, height, width)
        flat_query, flat_key = flat_query.to(work_dtype), flat_key.to(work_dtype)
        query_map = flat_query.transpose(1, 2).reshape(batch * heads, dim, height, width)
        key_map = flat_key.transpose(1, 2).reshape(batch * heads, dim, height, width)
        # For pair (i, j = i + o): logits q_i.k_j and q_j.k_i, normalisers L_i and L_j.
        # On a CPU the offset loop beats the tiled matrix products (about 2x for 64 channels at
        # 32 x 32 and 64 x 64); on a GPU one batched product saves ~100 kernel launches.
        # Autocast would run the tiled products (bmm) in bf16: these must stay in work_dtype.
        pair_dot = window_pair_dot_tiled if query.is_cuda else window_pair_dot
        with torch.autocast(query.device.type, enabled=False):
            logit_ij = pair_dot(query_map, key_map, offsets)  # (B*heads, O, h, w)
            logit_ji = pair_dot(key_map, query_map, offsets)
            norm_j = pair_dot(torch.ones_like(log_norm), log_norm, offsets)
            probs = resize_probs(probs.to(work_dtype), height, width)
            disagreement = 1.0 - pair_dot(probs, probs, offsets)
        # Invalid pairs get a very negative logit: their S is exactly 0 and carries no gradient.
        invalid = ~valid
        s_ij = torch.exp((logit_ij - log_norm).masked_fill(invalid, -1e4))
        s_ji = torch.exp((logit_ji - norm_j).masked_fill(invalid, -1e4))
        symmetric = (s_ij + s_ji).reshape(batch, heads, len(offsets), height, width).mean(dim=1)
        similarity = torch.sigmoid(attention.scale * symmetric + attention.bias)  # (B, O, h, w)

        gaussian = torch.tensor(
            [math.exp(-(dy * dy + dx * dx) / (2.0 * self.sigma**2)) for dy, dx in offsets],
            dtype=work_dtype,
            device=probs.device,
        )
        weight = gaussian[:, None, None] * valid  # (O, h, w), zero for pairs leaving the map
        total = (similarity * disagreement * weight).sum()
        if self.normalisation == "pairs":
            # Sum and count both over unordered pairs: equal to the mean over ordered pairs.
            return total / (batch * valid.sum())
        return 2.0 * total / (batch * height * width)
