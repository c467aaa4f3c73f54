"""Resampling of stacks of 2D maps: block-mean shrinking, linear resizing, bilinear warping.

All functions act on the last two axes (h, w) of an array and treat leading axes as a
batch. A displacement field is float32 (..., 2, h, w) holding (dy, dx) in pixels of its own
grid; warping ``maps`` by it reads ``maps[y + dy, x + dx]`` for output pixel (y, x).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage


def shrink_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """float32 block mean over ``factor`` x ``factor`` tiles of a (..., h, w) array; the last
    row/column tiles are completed by repeating the edge."""
    if factor == 1:
        return np.asarray(image, dtype=np.float32)
    h, w = image.shape[-2:]
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
        image = np.pad(image, pad, mode="edge")
    hh, ww = image.shape[-2] // factor, image.shape[-1] // factor
    shaped = image.reshape(*image.shape[:-2], hh, factor, ww, factor)
    return shaped.mean(axis=(-3, -1), dtype=np.float32)


@lru_cache(maxsize=256)
def _interpolation_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, fraction) per target pixel: linear interpolation between pixel-centre grids
    spanning the same field of view (the geometry of a block mean and its inverse)."""
    centres = (np.arange(target) + 0.5) * (source / target) - 0.5
    centres = np.clip(centres, 0.0, source - 1.0)
    low = np.floor(centres).astype(np.intp)
    high = np.minimum(low + 1, source - 1)
    fraction = (centres - low).astype(np.float32)
    for array in (low, high, fraction):
        array.setflags(write=False)
    return low, high, fraction


def _resize_axis(maps: np.ndarray, axis: int, size: int, window: slice) -> np.ndarray:
    low, high, fraction = (taps[window] for taps in _interpolation_taps(maps.shape[axis], size))
    shape = [1] * maps.ndim
    shape[axis] = len(fraction)
    fraction = fraction.reshape(shape)
    return np.take(maps, low, axis=axis) * (1 - fraction) + np.take(maps, high, axis=axis) * fraction


def resize_linear(
    maps: np.ndarray,
    height: int,
    width: int,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """float32 separable linear resize of the last two axes (h, w) to (height, width), both
    grids covering the same field of view; ``rows``/``cols`` return only that window of the
    result. (Gathers, not matrix products: a multi-threaded BLAS on a busy 2-core machine is
    far slower than this.)"""
    out = np.asarray(maps, dtype=np.float32)
    if out.shape[-1] != width or cols != slice(None):
        out = _resize_axis(out, out.ndim - 1, width, cols)
    if out.shape[-2] != height or rows != slice(None):
        out = _resize_axis(out, out.ndim - 2, height, rows)
    return np.ascontiguousarray(out, dtype=np.float32)


def resize_field(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (..., 2, h, w) displacement field resampled to (height, width) over the same field of
    view, its vectors rescaled to the new pixel size."""
    h, w = field.shape[-2:]
    if (h, w) == (height, width):
        return np.asarray(field, dtype=np.float32)
    out = resize_linear(field, height, width)
    out[..., 0, :, :] *= height / h
    out[..., 1, :, :] *= width / w
    return out


@lru_cache(maxsize=32)
def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(3.0 * sigma + 0.5))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    kernel.setflags(write=False)
    return kernel


def smooth_gaussian(maps: np.ndarray, sigma: float) -> np.ndarray:
    """float32 Gaussian smoothing of the last two axes (h, w) of ``maps``, edges repeated."""
    maps = np.asarray(maps, dtype=np.float32)
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(float(sigma))
    out = ndimage.correlate1d(maps, kernel, axis=-1, mode="nearest")
    return ndimage.correlate1d(out, kernel, axis=-2, mode="nearest")


@lru_cache(maxsize=64)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    return ys, xs


def warp_bilinear(maps: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Bilinear warp, edges clamped.

    ``maps``: (N, C, h, w) (or (C, h, w) for a single slice); ``field``: (N, 2, h, w) (or
    (2, h, w)). Returns float32 maps of the same shape as ``maps``.
    """
    single = maps.ndim == 3
    if single:
        maps, field = maps[None], field[None]
    n, channels, h, w = maps.shape
    grid_y, grid_x = _pixel_grid(h, w)
    ys = np.clip(grid_y + field[:, 0], 0.0, h - 1.0)
    xs = np.clip(grid_x + field[:, 1], 0.0, w - 1.0)
    y0 = np.minimum(ys.astype(np.int32), max(h - 2, 0))
    x0 = np.minimum(xs.astype(np.int32), max(w - 2, 0))
    fy = ys - y0
    fx = xs - x0
    step_y = w if h > 1 else 0
    step_x = 1 if w > 1 else 0
    plane = h * w
    # Flat index of each output pixel's top-left source pixel, in the first channel.
    index = (np.arange(n, dtype=np.int32) * (channels * plane))[:, None, None] + y0 * w + x0
    flat = np.ascontiguousarray(maps, dtype=np.float32).ravel()
    w00 = (1 - fy) * (1 - fx)
    w01 = (1 - fy) * fx
    w10 = fy * (1 - fx)
    w11 = fy * fx
    out = np.empty((n, channels, h, w), dtype=np.float32)
    for c in range(channels):
        at = index + c * plane
        out[:, c] = (
            flat[at] * w00
            + flat[at + step_x] * w01
            + flat[at + step_y] * w10
            + flat[at + step_y + step_x] * w11
        )
    return out[0] if single else out
