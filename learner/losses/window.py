"""Pixel pairs inside a square window, enumerated as shifts of the whole map.

Every unordered pair {i, j} of distinct pixels with |dy| <= r and |dx| <= r is visited once
as (i, j = i + o) for one offset o of :func:`half_window_offsets`; :func:`pair_views` returns
the two aligned views (all i, all j) of a (..., H, W) tensor for that offset, and
:func:`window_pair_dot` / :func:`window_pair_dot_tiled` give the channel dot products of all
window pairs as a (B, O, H, W) tensor. Nothing here forms an N x N matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def half_window_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of a (2r+1)^2 window without (0, 0), one of each +-o pair:
    dy > 0, or dy == 0 and dx > 0. Length ((2r+1)^2 - 1) / 2."""
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    return [
        (dy, dx)
        for dy in range(0, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy > 0 or dx > 0
    ]


def pair_regions(
    height: int, width: int, dy: int, dx: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(rows, cols) slices of the pixels i whose partner i + (dy, dx) lies inside an H x W map,
    and of those partners. Requires dy >= 0 (see :func:`half_window_offsets`)."""
    if dy < 0:
        raise ValueError("pair regions expect dy >= 0 (use half_window_offsets)")
    first = (slice(0, max(0, height - dy)), slice(max(0, -dx), max(0, width - max(0, dx))))
    second = (
        slice(min(dy, height), height),
        slice(min(max(0, dx), width), max(0, width + min(0, dx))),
    )
    return first, second


def pair_views(tensor: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (first, second) of ``tensor`` (..., H, W): first[..., y, x] is a pixel i and
    second[..., y, x] its partner i + (dy, dx), over every i whose partner is inside the map.
    Both have shape (..., H - dy, W - |dx|)."""
    first, second = pair_regions(tensor.shape[-2], tensor.shape[-1], dy, dx)
    return tensor[(..., *first)], tensor[(..., *second)]


def pair_count(height: int, width: int, dy: int, dx: int) -> int:
    """Number of pixels i of an H x W map whose partner i + (dy, dx) is inside the map."""
    return max(0, height - abs(dy)) * max(0, width - abs(dx))


def pair_validity(
    height: int, width: int, offsets: list[tuple[int, int]], device=None
) -> torch.Tensor:
    """(O, H, W) bool: True at i when i + offsets[o] lies inside the map."""
    valid = torch.zeros(len(offsets), height, width, dtype=torch.bool, device=device)
    for index, (dy, dx) in enumerate(offsets):
        first, _ = pair_regions(height, width, dy, dx)
        valid[(index, *first)] = True
    return valid


class _WindowPairDot(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: torch.Tensor, y: torch.Tensor, offsets: tuple[tuple[int, int], ...]
    ) -> torch.Tensor:
        batch, _, height, width = x.shape
        out = x.new_zeros(batch, len(offsets), height, width)
        for index, (dy, dx) in enumerate(offsets):
            first, second = pair_regions(height, width, dy, dx)
            out[(slice(None), index, *first)] = (x[(..., *first)] * y[(..., *second)]).sum(dim=1)
        ctx.save_for_backward(x, y)
        ctx.offsets = offsets
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, y = ctx.saved_tensors
        height, width = x.shape[-2:]
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_y = torch.zeros_like(y) if ctx.needs_input_grad[1] else None
        for index, (dy, dx) in enumerate(ctx.offsets):
            first, second = pair_regions(height, width, dy, dx)
            grad = grad_out[(slice(None), index, *first)].unsqueeze(1)
            if grad_x is not None:
                grad_x[(..., *first)].addcmul_(grad, y[(..., *second)])
            if grad_y is not None:
                grad_y[(..., *second)].addcmul_(grad, x[(..., *first)])
        return grad_x, grad_y, None


def window_pair_dot(
    x: torch.Tensor, y: torch.Tensor, offsets: list[tuple[int, int]]
) -> torch.Tensor:
    """out[b, o, i] = sum_k x[b, k, i] * y[b, k, i + offsets[o]] (0 where i + o leaves the map).

    x, y (B, K, H, W) -> (B, O, H, W); offsets need dy >= 0. Forward and backward loop over the
    offsets and accumulate gradients in place, so no (B, O, K, H, W) tensor is ever formed.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"x and y must be (B, K, H, W) of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    return _WindowPairDot.apply(x, y, tuple(offsets))


def window_pair_dot_tiled(
    x: torch.Tensor, y: torch.Tensor, offsets: list[tuple[int, int]], tile: int = 8
) -> torch.Tensor:
    """Same result as :func:`window_pair_dot`, computed with one batched matrix product per
    tile: the t*t pixels of a tile of x against the (t + 2r)^2 pixels of the same tile of y
    grown by the window radius r, then the wanted offsets picked out. About (t + 2r)^2 / O
    times the multiply-adds of the direct method, but as matrix products, which is faster when
    K (channels) is large; memory O(B * H * W * (t + 2r)^2) floats."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"x and y must be (B, K, H, W) of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    batch, channels, height, width = x.shape
    radius = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    tiles_y, tiles_x = -(-height // tile), -(-width // tile)
    pad_h, pad_w = tiles_y * tile - height, tiles_x * tile - width
    halo = tile + 2 * radius
    # x tiles: (B * T, t*t, K); y tiles with halo: (B * T, K, halo*halo). Zero padding makes
    # every pair that leaves the map contribute 0.
    x_tiles = F.pad(x, (0, pad_w, 0, pad_h)).reshape(batch, channels, tiles_y, tile, tiles_x, tile)
    x_tiles = x_tiles.permute(0, 2, 4, 3, 5, 1).reshape(
        batch * tiles_y * tiles_x, tile * tile, channels
    )
    y_padded = F.pad(y, (radius, radius + pad_w, radius, radius + pad_h))
    y_tiles = F.unfold(y_padded, kernel_size=halo, stride=tile)  # (B, K * halo^2, T)
    y_tiles = y_tiles.reshape(batch, channels, halo * halo, -1).permute(0, 3, 1, 2)
    y_tiles = y_tiles.reshape(batch * tiles_y * tiles_x, channels, halo * halo)
    products = torch.bmm(x_tiles, y_tiles)  # (B * T, t*t, halo*halo)
    rows = torch.arange(tile, device=x.device)
    position = (rows[:, None] * tile + rows[None, :]).reshape(-1)  # (t*t,) pixel inside the tile
    targets = [
        (rows[:, None] + radius + dy) * halo + (rows[None, :] + radius + dx) for dy, dx in offsets
    ]
    partner = torch.stack(targets, dim=-1).reshape(tile * tile, len(offsets))  # (t*t, O)
    picked = products[:, position[:, None], partner]  # (B * T, t*t, O)
    picked = picked.reshape(batch, tiles_y, tiles_x, tile, tile, len(offsets))
    picked = picked.permute(0, 5, 1, 3, 2, 4).reshape(
        batch, len(offsets), tiles_y * tile, tiles_x * tile
    )
    return picked[..., :height, :width]
