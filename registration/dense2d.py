"""Dense 2D labels from sparse strokes and clicks on one slice.

Marker-controlled watershed (scikit-image) on the gradient magnitude of the slice: every
unlabelled pixel joins the class whose seeds reach it first when the image is flooded from
its flattest parts, so class borders settle on intensity edges. When the model's class
probabilities for the slice are given, their edges are added to the image's, so the
flood also stops where the model sees a border. A small compactness keeps regions from
leaking through gaps in weak edges.

The watershed regions are then refined by appearance: their one-hot maps, blurred over a
few pixels (in proportion to the slice size), are the prior of a per-pixel posterior
whose likelihood is each class's intensity histogram learnt from its seeds
(``registration.appearance``). This moves borders the flood placed on the wrong edge,
typically the myocardium's, onto the intensity change between classes.

(On ACDC validation slices with simulated scribbles the watershed gave a per-slice mean
Dice of 0.80 against 0.74 for scikit-image's random walker at its best beta, in ~20 ms
instead of 0.1-3 s. On 90 ACDC *training* slices (3 per volume, 30 volumes) the appearance
refinement raised it from 0.784 to 0.812 (myocardium 0.684 -> 0.726) for ~10 ms more;
on hippocampus slices (~35 x 50 pixels) it changes nothing.)

A correction leaves few pixels undecided: the previous answer seeds the rest of the plane
(``registration.corrections``). The flood and the refinement therefore run on the box of
the pixels left open (their filters on the box grown by their reach): the labels of the
whole plane's run in a quarter of the time (26 -> 6 ms a plane; the same labels on all 395
planes of ACDC and hippocampus val replays, and every round of ``clients.bench_rounds`` on
ACDC val 20 x 10 and hippocampus val 10 x 8 the same). One exception: markers that tie
exactly in relief (of any classes; a flooded pixel's compactness term depends on which of
them it came from) are popped in the order of scikit-image's heap, which depends on every
marker pushed. Such ties need exactly flat relief, e.g. where intensities are clipped: on
noise-free piecewise-constant synthetic planes 31 of 200 came out a few pixels different.

Last, a structure enclosed by another, a cavity inside its wall (the left-ventricular blood
pool inside the myocardium), is filled out to its convex hull at the wall's expense
(``fill_enclosed_to_hull``). The wall's seeds otherwise flood the dark trabeculae and
papillary muscles along the cavity's rim, which look like the wall but which labelling
protocols (ACDC's) count to the cavity: on ACDC the myocardium came out too thick and the
pool too small on drawn slices, the largest error left on them after ten rounds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import sobel
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from registration.appearance import (
    class_intensity_model,
    normalize_intensity_sampled,
    reweight_by_intensity,
)
from registration.io.volume import UNLABELLED
from registration.labels import bounding_box, bounding_extent

#: Flooding regularity (skimage ``compactness``): 0 = pure watershed.
COMPACTNESS = 1e-3
#: Weight of the model's probability edges against the image's (both in 0..1 units).
MODEL_EDGE_WEIGHT = 0.5
#: Blur (pixels per 128 pixels of the slice's shorter side) of the watershed regions that
#: form the prior of the appearance refinement; 0 turns the refinement off.
REFINE_SIGMA_PER_128 = 0.8
#: Exponent of the intensity likelihood in the appearance refinement.
REFINE_INTENSITY_WEIGHT = 0.8
#: The refinement runs only when every seeded class has at least this many seeded pixels
#: (strokes, not clicks): fewer give spiky histograms that scatter islands along borders
#: (50 would also skip many simulated ACDC strokes and lose the gain, measured on train).
REFINE_MIN_SEEDS = 10
#: Without background seeds, the pixels out of every drawn class's reach are background too
#: (``far_from_seeds``), not only the slice border: strokes on the structures alone (a first
#: round on an empty answer) otherwise flooded the body around them, e.g. a myocardium of
#: 17 433 pixels against 944 in a walk-through. A stroke's reach is ``REACH_EXTENT_SHARE`` x
#: the extent of its class's strokes (a stroke spans its structure), at least
#: ``REACH_MIN_SHARE`` x the slice's shorter side; a click (a connected group of seeds within
#: ``CLICK_EXTENT_PIXELS`` x ``CLICK_EXTENT_PIXELS``) tells no size and reaches
#: ``CLICK_REACH_SHARE`` x the shorter side. Lengths are in mm on the plane's grid. Measured on
#: every labelled z slice of the val sets (ACDC 205, hippocampus 502), the annotator's
#: first-round drawing without its background stroke, mean foreground Dice of the dense
#: labels, border only -> this rule: ACDC strokes 0.477 -> 0.742, clicks 0.465 -> 0.656;
#: hippocampus strokes 0.561 -> 0.730, clicks 0.518 -> 0.568 (extent shares 0.3-2.0, minimum
#: shares 0.03-0.2 and click shares 0.2-0.4 tried: 0.4 was a little better on ACDC strokes,
#: 0.3 on hippocampus clicks; docs/benchmarks.md).
REACH_EXTENT_SHARE = 0.5
REACH_MIN_SHARE = 0.05
CLICK_REACH_SHARE = 0.2
CLICK_EXTENT_PIXELS = 3
#: The refinement changes only pixels whose blurred prior is below this for every class,
#: i.e. the band of about two blur widths along the watershed borders.
REFINE_BAND = 0.99
#: A foreground class counts as enclosed by another when at least this share of its pixels
#: lies inside the other's outline (the other with its holes filled); not tuned.
ENCLOSED_SHARE = 0.5
#: An enclosed class is filled out to its convex hull only when the hull adds at most this
#: share of its area: a cavity's rim bitten by its wall's flood, not a structure that is
#: not convex (a C shape) by nature. Mean foreground Dice of first drawings on every labelled
#: z slice, without -> with the hull fill: ACDC val (205 slices, where 0.5 was chosen; 1.0
#: gave the same, 0.25 0.002-0.003 less) strokes without background 0.742 -> 0.760, clicks
#: 0.656 -> 0.663, strokes with background 0.807 -> 0.828; ACDC train, first 30 volumes (282
#: slices, not used to choose) 0.714 -> 0.735, 0.624 -> 0.627, 0.797 -> 0.822; hippocampus (no
#: class encloses another) unchanged (docs/benchmarks.md, "A cavity's rim").
HULL_MAX_GROWTH = 0.5


def _smoothing_sigma(shape: tuple[int, int]) -> float:
    """Pre-smoothing of the slice (pixels): 1 on typical 256-pixel slices, less on small ones."""
    return float(np.clip(min(shape) / 128.0, 0.5, 1.0))


def densify_slice(
    image_yx: np.ndarray,
    seeds_yx: np.ndarray,
    num_classes: int,
    probabilities_cyx: np.ndarray | None = None,
    spacing_yx: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """int64 labels (y, x) in 0..C-1 for every pixel of the slice.

    ``image_yx``: any real 2D array. ``seeds_yx``: ints of the same shape, a class 0..C-1
    where the user drew, ``UNLABELLED`` elsewhere. ``probabilities_cyx``: optional float
    (C, y, x) model probabilities for the slice. Seeded pixels keep their class. Without
    background seeds, the slice border and the pixels out of every class's reach
    (``far_from_seeds``, in mm with ``spacing_yx``) are taken as background. Raises
    ValueError when nothing is seeded.
    """
    image = np.asarray(image_yx, dtype=np.float32)
    seeds = np.asarray(seeds_yx)
    if image.ndim != 2 or seeds.shape != image.shape:
        raise ValueError(f"expected 2D image and seeds of one shape, got {image.shape} and {seeds.shape}")
    seeded = seeds != UNLABELLED
    if not seeded.any():
        raise ValueError("no seeds: nothing to densify")
    if (seeds[seeded] >= num_classes).any() or (seeds[seeded] < 0).any():
        raise ValueError(f"seed labels outside 0..{num_classes - 1}")
    if probabilities_cyx is not None and np.shape(probabilities_cyx) != (num_classes,) + image.shape:
        raise ValueError(f"probabilities must be (C, y, x) = {(num_classes,) + image.shape}")

    markers = np.where(seeded, seeds.astype(np.int64) + 1, 0)  # watershed: 0 = to be decided
    if not (seeds[seeded] == 0).any():
        border = np.zeros(image.shape, dtype=bool)
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
        markers[(border | far_from_seeds(seeds, spacing_yx)) & ~seeded] = 1

    normalized = normalize_intensity_sampled(image[None])[0]
    labels = markers - 1
    undecided = _box(markers == 0)
    if undecided is not None:
        # The flood of an undecided pixel comes from the markers around its region, all of
        # them inside the box grown by one pixel.
        flooded = _grown_box(undecided, 1, image.shape)
        relief = flooding_relief(normalized, probabilities_cyx, flooded)
        labels[flooded] = watershed(relief, markers[flooded], compactness=COMPACTNESS) - 1
    unseeded = _box(~seeded)
    if unseeded is not None:  # the refinement may change only pixels the seeds leave open
        labels = refine_by_appearance(labels, normalized, seeds, num_classes, box=unseeded)
    labels[seeded] = seeds[seeded]
    return fill_enclosed_to_hull(labels, seeded, num_classes).astype(np.int64)


def _grown_box(box: tuple[slice, slice], margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """``box`` grown by ``margin`` pixels on every side, clipped to a plane of ``shape``."""
    return tuple(slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(box, shape, strict=True))


def _inside(outer: tuple[slice, slice], box: tuple[slice, slice]) -> tuple[slice, slice]:
    """``box`` in the coordinates of the crop ``outer`` that contains it."""
    return tuple(slice(b.start - o.start, b.stop - o.start) for o, b in zip(outer, box, strict=True))


def _gaussian_reach(sigma: float) -> int:
    """Radius (pixels) of scipy's Gaussian kernel at its default truncation of 4 sigma: a
    filtered pixel depends on no pixel further away."""
    return int(4.0 * sigma + 0.5)


def flooding_relief(
    normalized_yx: np.ndarray, probabilities_cyx: np.ndarray | None, box: tuple[slice, slice]
) -> np.ndarray:
    """float32 (box): the watershed's relief on ``box`` of the plane: the Sobel edges of the
    smoothed ``normalized_yx``, plus MODEL_EDGE_WEIGHT x the strongest edge of the model's
    class probabilities (C, y, x) when given. Computed on the box grown by the filters'
    reach, so that it equals the relief of the whole plane there."""
    sigma = _smoothing_sigma(normalized_yx.shape)
    context = _grown_box(box, _gaussian_reach(sigma) + 1, normalized_yx.shape)
    relief = sobel(ndimage.gaussian_filter(normalized_yx[context], sigma))
    if probabilities_cyx is not None:
        model = np.asarray(probabilities_cyx)[(slice(None), *context)].astype(np.float32, copy=False)
        relief = relief + MODEL_EDGE_WEIGHT * np.max([sobel(p) for p in model], axis=0)
    return relief[_inside(context, box)]


def far_from_seeds(seeds_yx: np.ndarray, spacing_yx: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """bool (y, x): the pixels out of the reach (the constants above) of every seeded class's
    strokes and clicks; all False when nothing is seeded. ``spacing_yx``: the plane's pixel
    spacing (mm), so that a plane across thick slices is measured as drawn."""
    seeds = np.asarray(seeds_yx)
    spacing = tuple(float(d) for d in spacing_yx)
    side = min(n * d for n, d in zip(seeds.shape, spacing, strict=True))
    classes = np.unique(seeds[seeds != UNLABELLED])
    far = np.full(seeds.shape, classes.size > 0)
    for cls in classes:
        drawn = seeds == cls
        components, _ = ndimage.label(drawn, structure=np.ones((3, 3), dtype=bool))
        clicks = np.zeros_like(drawn)
        for number, box in enumerate(ndimage.find_objects(components), start=1):
            if max(part.stop - part.start for part in box) <= CLICK_EXTENT_PIXELS:
                clicks[box] |= components[box] == number
        strokes = drawn & ~clicks
        for group, reach in ((strokes, REACH_EXTENT_SHARE * bounding_extent(strokes, spacing)),
                             (clicks, CLICK_REACH_SHARE * side)):
            if group.any():
                far &= ndimage.distance_transform_edt(~group, sampling=spacing) > max(reach, REACH_MIN_SHARE * side)
    return far


def refine_by_appearance(
    labels_yx: np.ndarray, normalized_yx: np.ndarray, seeds_yx: np.ndarray, num_classes: int,
    box: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """Labels (y, x) of argmax_c blur(onehot(labels))_c * p(intensity | c)^REFINE_INTENSITY_WEIGHT,
    p learnt from the seeded pixels of ``normalized_yx`` (intensities in 0..1), inside the band
    along the borders of ``labels_yx``; ``labels_yx`` elsewhere. With ``box`` (a crop of the
    plane), only the pixels in it may change: the blur is taken on the box grown by its reach,
    so the box's pixels come out as they would from the whole plane."""
    sigma = REFINE_SIGMA_PER_128 * min(labels_yx.shape) / 128.0
    if sigma <= 0:
        return labels_yx
    seeded = seeds_yx != UNLABELLED
    if not seeded.any():  # nothing to learn appearances from
        return labels_yx
    counts = np.bincount(seeds_yx[seeded].astype(np.int64), minlength=num_classes)
    if counts[counts > 0].min() < REFINE_MIN_SEEDS:  # clicks: too few pixels for a histogram
        return labels_yx
    seed_one_hot = np.stack([(seeds_yx[seeded] == c).astype(np.float32) for c in range(num_classes)])
    model = class_intensity_model(normalized_yx[seeded], seed_one_hot)
    box = (slice(0, labels_yx.shape[0]), slice(0, labels_yx.shape[1])) if box is None else box
    context = _grown_box(box, _gaussian_reach(sigma), labels_yx.shape)
    around = labels_yx[context]
    prior = np.stack([ndimage.gaussian_filter((around == c).astype(np.float32), sigma) for c in range(num_classes)])
    prior = prior[(slice(None), *_inside(context, box))]
    prior /= np.maximum(prior.sum(axis=0, keepdims=True), 1e-12)
    refined = np.argmax(reweight_by_intensity(prior, normalized_yx[box], model, REFINE_INTENSITY_WEIGHT), axis=0)
    # Only the band along the watershed borders may change: deep inside a region a few
    # seeds' spiky histograms would otherwise punch holes and islands.
    border_band = prior.max(axis=0) < REFINE_BAND
    out = np.array(labels_yx, copy=True)
    out[box] = np.where(border_band, refined, labels_yx[box])
    return out


def _box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of the True pixels of a 2D ``mask`` as slices; None when none is."""
    box = bounding_box(mask)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    return slice(y0, y1), slice(x0, x1)


def fill_enclosed_to_hull(labels_yx: np.ndarray, keep_yx: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels (y, x) where a foreground class c enclosed by another foreground class d (at
    least ``ENCLOSED_SHARE`` of c's pixels inside d's outline, i.e. d with its holes filled)
    takes the pixels of d inside the convex hull of its part in that outline, unless the hull
    adds more than ``HULL_MAX_GROWTH`` of that part's area. A connected piece of d inside the
    hull that holds a pixel where ``keep_yx`` is True (drawn by the user, or the previous
    answer they accepted) stays d whole: the user put the wall there. Classes are visited
    smallest first; the background is never taken or given. ``labels_yx`` is not modified."""
    out = np.array(labels_yx, copy=True)
    keep = np.asarray(keep_yx, dtype=bool)
    if keep.shape != out.shape or out.ndim != 2:
        raise ValueError(f"expected 2D labels and keep mask of one shape, got {out.shape} and {keep.shape}")
    areas = np.bincount(out.ravel().astype(np.int64), minlength=num_classes)
    present = [c for c in range(1, num_classes) if areas[c] > 0]
    if len(present) < 2:
        return out
    outlines = {}
    for cls in present:
        box = _box(out == cls)
        outline = np.zeros(out.shape, dtype=bool)
        outline[box] = ndimage.binary_fill_holes(out[box] == cls)
        outlines[cls] = outline
    for cls in sorted(present, key=lambda c: int(areas[c])):
        for wall in present:
            if wall == cls:
                continue
            region = out == cls
            inside = region & outlines[wall]
            area = int(inside.sum())
            if area == 0 or area < ENCLOSED_SHARE * region.sum():
                continue
            box = _box(inside)
            growth = convex_hull_image(inside[box]) & ~inside[box]
            if growth.sum() > HULL_MAX_GROWTH * area:
                continue
            pieces, _ = ndimage.label(growth & (out[box] == wall), structure=np.ones((3, 3), dtype=bool))
            held = np.unique(pieces[keep[box] & (pieces > 0)])
            take = (pieces > 0) & ~np.isin(pieces, held)
            out[box][take] = cls
    return out
