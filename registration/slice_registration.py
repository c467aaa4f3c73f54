"""Deformable registration of 2D slice pairs: multi-resolution symmetric-forces demons.

``register_slice_pairs(fixed, moving)`` takes two float32 stacks (N, h, w) with intensities
on a common scale (e.g. [0, 1]) and returns displacement fields (N, 2, h, w), (dy, dx) in
pixels on the fixed grid, such that ``moving[y + dy, x + dx] ≈ fixed[y, x]``: warping a
map drawn on the moving slice with the field carries it onto the fixed slice.

Two interchangeable backends compute the same algorithm (Thirion's demons with symmetric
forces and Gaussian regularisation of the field, coarse to fine):
  - ``numpy`` (default): all N pairs advance together, one vectorised step per iteration.
    Interactive rounds need this: SimpleITK's demons filters cost about 1 ms per iteration
    per pair whatever the image size, i.e. about 1 s for the ~16 pairs x 70 iterations of
    one cardiac volume on the 2-core reference machine, twice the latency budget.
  - ``simpleitk``: ``sitk.FastSymmetricForcesDemonsRegistrationFilter`` pair by pair, in a
    thread pool; the reference implementation, for checking and for offline use.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass

import numpy as np

from registration.memo import ArrayMemo, content_digest
from registration.resample import resize_field, shrink_mean, smooth_gaussian, warp_bilinear

BACKENDS = ("numpy", "simpleitk")


@dataclass(frozen=True)
class DemonsSettings:
    """``iterations[i]`` demons iterations at a shrink of ``2 ** (len(iterations) - 1 - i)``
    (coarse to fine, the last level at the given resolution)."""

    #: (20, 10) -> (20, 50) raised train mask Dice on every benchmark row (ACDC K = 1 0.806 ->
    #: 0.812, hippocampus K = 1 0.771 -> 0.781; docs/benchmarks.md); more gave no more.
    iterations: tuple[int, ...] = (20, 50)
    #: Gaussian regularisation of the displacement field after each iteration (pixels).
    field_sigma: float = 1.0
    backend: str = "numpy"
    #: Worker threads for the ``simpleitk`` backend (0: min(2, CPU count)).
    threads: int = 0


def register_slice_pairs(
    fixed: np.ndarray, moving: np.ndarray, settings: DemonsSettings | None = None
) -> np.ndarray:
    """float32 fields (N, 2, h, w) registering each ``moving[i]`` onto ``fixed[i]`` (N, h, w)."""
    settings = settings or DemonsSettings()
    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if fixed.shape != moving.shape or fixed.ndim != 3:
        raise ValueError(f"expected two (N, h, w) stacks of one shape, got {fixed.shape} and {moving.shape}")
    if fixed.shape[0] == 0:
        return np.zeros((0, 2) + fixed.shape[1:], dtype=np.float32)
    if settings.backend == "numpy":
        return _numpy_demons(fixed, moving, settings)
    if settings.backend == "simpleitk":
        return _simpleitk_demons(fixed, moving, settings)
    raise ValueError(f"unknown demons backend {settings.backend!r}; choose one of {BACKENDS}")


#: Fields of recently registered slice pairs, by the digest of the two slices and the
#: settings. A field depends on the image alone, so the rounds of one session register
#: the same pairs again and again (ACDC: ~0.3 s of a round's compute on one core).
#: At most 32 KB per entry (2 x 64 x 64 float32 on the working grid).
FIELD_CACHE_ENTRIES = 1024
_field_cache = ArrayMemo(FIELD_CACHE_ENTRIES)


def register_slice_pairs_memoised(
    fixed: np.ndarray, moving: np.ndarray, settings: DemonsSettings | None = None
) -> np.ndarray:
    """:func:`register_slice_pairs`, registering only the pairs not seen recently (each pair's
    field is computed on its own, so a batch of fewer pairs gives each the same field)."""
    settings = settings or DemonsSettings()
    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if fixed.shape != moving.shape or fixed.ndim != 3:
        raise ValueError(f"expected two (N, h, w) stacks of one shape, got {fixed.shape} and {moving.shape}")
    if fixed.shape[0] == 0:
        return np.zeros((0, 2) + fixed.shape[1:], dtype=np.float32)
    label = repr(astuple(settings))
    keys = [content_digest(label, f, m) for f, m in zip(fixed, moving, strict=True)]
    fields = [_field_cache.get(key) for key in keys]
    missing = [i for i, field in enumerate(fields) if field is None]
    if missing:
        computed = register_slice_pairs(fixed[missing], moving[missing], settings)
        for i, field in zip(missing, computed, strict=True):
            fields[i] = field
            _field_cache.put(keys[i], field)
    return np.stack(fields).astype(np.float32, copy=False)


def field_cache_counts() -> dict[str, int]:
    """Hits and misses of :func:`register_slice_pairs_memoised` since the process started."""
    return _field_cache.counts()


def _levels(shape: tuple[int, int], count: int) -> list[int]:
    """Shrink factors, coarse to fine, dropping levels whose image would be under 8 pixels."""
    factors = [2 ** (count - 1 - i) for i in range(count)]
    return [f if min(shape) // f >= 8 else 0 for f in factors]


# ------------------------------------------------------------------------ numpy backend


def _gradient(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences along y and x of (N, h, w), one-sided at the edges."""
    gy = np.empty_like(images)
    gx = np.empty_like(images)
    gy[:, 1:-1] = 0.5 * (images[:, 2:] - images[:, :-2])
    gy[:, 0] = images[:, 1] - images[:, 0]
    gy[:, -1] = images[:, -1] - images[:, -2]
    gx[:, :, 1:-1] = 0.5 * (images[:, :, 2:] - images[:, :, :-2])
    gx[:, :, 0] = images[:, :, 1] - images[:, :, 0]
    gx[:, :, -1] = images[:, :, -1] - images[:, :, -2]
    return gy, gx


def _numpy_demons(fixed: np.ndarray, moving: np.ndarray, settings: DemonsSettings) -> np.ndarray:
    n, h, w = fixed.shape
    field: np.ndarray | None = None
    for factor, iterations in zip(_levels((h, w), len(settings.iterations)), settings.iterations, strict=True):
        if factor == 0 or (iterations <= 0 and field is None):  # a zero field needs no level of its own
            continue
        f = shrink_mean(fixed, factor)
        m = shrink_mean(moving, factor)
        hh, ww = f.shape[1:]
        field = (
            np.zeros((n, 2, hh, ww), dtype=np.float32) if field is None else resize_field(field, hh, ww)
        )
        fixed_gy, fixed_gx = _gradient(f)
        for _ in range(int(iterations)):
            warped = warp_bilinear(m[:, None], field)[:, 0]
            difference = f - warped
            moving_gy, moving_gx = _gradient(warped)
            gy = 0.5 * (fixed_gy + moving_gy)
            gx = 0.5 * (fixed_gx + moving_gx)
            # Thirion's normalisation (pixel units): a step never exceeds half a pixel.
            denominator = gy * gy + gx * gx + difference * difference
            scale = np.divide(difference, denominator, out=np.zeros_like(difference), where=denominator > 1e-9)
            # moving(x + u + du) ≈ warped + ∇·du = fixed  =>  du along the gradient.
            field[:, 0] += scale * gy
            field[:, 1] += scale * gx
            field = smooth_gaussian(field, settings.field_sigma)
    if field is None:
        return np.zeros((n, 2, h, w), dtype=np.float32)
    return resize_field(field, h, w)


# -------------------------------------------------------------------- SimpleITK backend


def _simpleitk_pair(fixed: np.ndarray, moving: np.ndarray, settings: DemonsSettings) -> np.ndarray:
    import SimpleITK as sitk

    field_xy: np.ndarray | None = None  # (h, w, 2) holding (dx, dy), SimpleITK's order
    levels = _levels(fixed.shape, len(settings.iterations))
    for factor, iterations in zip(levels, settings.iterations, strict=True):
        if factor == 0:
            continue
        f = shrink_mean(fixed, factor)
        m = shrink_mean(moving, factor)
        if field_xy is not None:
            grown = resize_field(np.moveaxis(field_xy, -1, 0)[::-1], *f.shape)
            field_xy = np.moveaxis(grown[::-1], 0, -1)
        if iterations <= 0:
            field_xy = np.zeros(f.shape + (2,), dtype=np.float32) if field_xy is None else field_xy
            continue
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations))
        demons.SetStandardDeviations(float(settings.field_sigma))
        demons.SetNumberOfThreads(1)
        fixed_image = sitk.GetImageFromArray(f)
        moving_image = sitk.GetImageFromArray(m)
        if field_xy is None:
            result = demons.Execute(fixed_image, moving_image)
        else:
            initial = sitk.GetImageFromArray(np.ascontiguousarray(field_xy, dtype=np.float64), isVector=True)
            result = demons.Execute(fixed_image, moving_image, initial)
        field_xy = sitk.GetArrayFromImage(result).astype(np.float32)
    if field_xy is None:
        return np.zeros((2,) + fixed.shape, dtype=np.float32)
    return resize_field(np.ascontiguousarray(np.moveaxis(field_xy, -1, 0)[::-1]), *fixed.shape)


def _simpleitk_demons(fixed: np.ndarray, moving: np.ndarray, settings: DemonsSettings) -> np.ndarray:
    workers = settings.threads if settings.threads > 0 else max(1, min(2, os.cpu_count() or 1))
    pairs = list(zip(fixed, moving, strict=True))
    if workers == 1 or len(pairs) == 1:
        fields = [_simpleitk_pair(f, m, settings) for f, m in pairs]
    else:  # SimpleITK releases the GIL inside Execute
        with ThreadPoolExecutor(max_workers=workers) as pool:
            fields = list(pool.map(lambda p: _simpleitk_pair(p[0], p[1], settings), pairs))
    return np.stack(fields).astype(np.float32)
