"""`python -m clients.bench_first_slice`: the dense labels of a first drawn slice, without a server.

For every slice along z of every volume that holds a labelled structure big enough to draw
(the others are counted as skipped, alike with and without background), the simulated
annotator (``clients.annotator.corrective_scribble``) draws what a person draws on a slice
with no answer yet, strokes or clicks; with ``--without-background`` its background stroke is
left out (a person who marks only the structures). ``registration.dense2d.densify_slice``
turns the drawing into dense labels, which are scored against the truth of the slice: mean
foreground Dice over the classes the slice shows, and the pixels called foreground where the
truth is background (a flood).

    python -m clients.bench_first_slice --data ../shared/data/acdc/val --without-background --out first.json
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from clients.annotator import NOTHING, corrective_scribble, mean_foreground_dice, structures_only
from clients.bench_rounds import data_paths, print_and_write
from learner.data import load_case
from learner.metrics import dice_per_class
from registration.dense2d import densify_slice
from registration.io.volume import UNLABELLED
from registration.round import plane_spacing


def score_first_slices(
    image_zyx: np.ndarray, truth_zyx: np.ndarray, num_classes: int, mode: str, without_background: bool,
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[list[dict], int]:
    """Rows per z slice on which the annotator draws a structure: its index, Dice of the dense
    labels, flooded pixels, drawn pixels; and the number of labelled slices skipped because
    their structures are too small to draw (the same slices with and without background)."""
    rows, skipped = [], 0
    for z in range(truth_zyx.shape[0]):
        truth = truth_zyx[z]
        if not truth.any():
            continue
        drawing = corrective_scribble(truth, np.full_like(truth, NOTHING), num_classes, mode=mode)
        structures = structures_only(drawing)
        if not (structures != UNLABELLED).any():
            skipped += 1
            continue
        if without_background:
            drawing = structures
        labels = densify_slice(image_zyx[z], drawing, num_classes, spacing_yx=plane_spacing(spacing_zyx, 0))
        dice = dice_per_class(labels[None], truth[None], num_classes)
        shown = {c: d for c, d in dice.items() if (truth == c).any()}
        rows.append({
            "slice": z,
            "dice": mean_foreground_dice(shown),
            "flooded_pixels": int(((labels > 0) & (truth == 0)).sum()),
            "drawn_pixels": int((drawing != UNLABELLED).sum()),
        })
    return rows, skipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ACDC HDF5 or images/ + labels/ NIfTI directory")
    parser.add_argument("--limit", type=int, default=None, help="the first N volumes (default: all)")
    parser.add_argument("--mode", choices=("strokes", "clicks"), default="strokes")
    parser.add_argument("--without-background", action="store_true", help="leave out the background stroke")
    parser.add_argument("--out", help="write the rows and the summary as JSON here")
    options = parser.parse_args(argv)
    rows, skipped = [], 0
    started = time.perf_counter()
    for image_path, label_path in data_paths(options.data, options.limit):
        case = load_case(image_path, label_path)
        if case.label is None:
            raise SystemExit(f"{case.name}: no labels to score against")
        truth = np.asarray(case.label, dtype=np.int64)
        num_classes = max(int(truth.max()) + 1, 2)
        scored, passed_over = score_first_slices(case.image.array, truth, num_classes, options.mode,
                                                 options.without_background, case.image.spacing_zyx)
        rows += [{"case": case.name, **row} for row in scored]
        skipped += passed_over
        print(f"{case.name}: {len(rows)} slices so far", flush=True)
    if not rows:
        raise SystemExit(f"{options.data}: no labelled slice to draw on")
    summary = {
        "data": options.data,
        "mode": options.mode,
        "without_background": options.without_background,
        "slices": len(rows),
        "skipped_slices": skipped,
        "mean_dice": float(np.mean([r["dice"] for r in rows])),
        "mean_flooded_pixels": float(np.mean([r["flooded_pixels"] for r in rows])),
        "seconds": time.perf_counter() - started,
        "cpu": platform.processor() or platform.machine(),
    }
    print_and_write(summary, rows, options.out)


if __name__ == "__main__":
    main()
