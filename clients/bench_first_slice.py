"""`python -m clients.bench_first_slice`: the dense labels of a first drawn slice, without a server.

For every slice along z of every volume that holds a labelled structure, the simulated
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
import json
import platform
import time

import numpy as np

from clients.annotator import NOTHING, corrective_scribble, mean_foreground_dice
from learner.data import case_paths, load_case
from learner.metrics import dice_per_class
from registration.dense2d import densify_slice
from registration.io.volume import UNLABELLED


def score_first_slices(
    image_zyx: np.ndarray, truth_zyx: np.ndarray, num_classes: int, mode: str, without_background: bool
) -> list[dict]:
    """Rows per labelled z slice: its index, Dice of the dense labels, flooded pixels, drawn pixels."""
    rows = []
    for z in range(truth_zyx.shape[0]):
        truth = truth_zyx[z]
        if not truth.any():
            continue
        drawing = corrective_scribble(truth, np.full_like(truth, NOTHING), num_classes, mode=mode)
        if without_background:
            drawing[drawing == 0] = UNLABELLED
        if not (drawing != UNLABELLED).any():
            continue
        labels = densify_slice(image_zyx[z], drawing, num_classes)
        dice = dice_per_class(labels[None], truth[None], num_classes)
        shown = {c: d for c, d in dice.items() if (truth == c).any()}
        rows.append({
            "slice": z,
            "dice": mean_foreground_dice(shown),
            "flooded_pixels": int(((labels > 0) & (truth == 0)).sum()),
            "drawn_pixels": int((drawing != UNLABELLED).sum()),
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ACDC HDF5 or images/ + labels/ NIfTI directory")
    parser.add_argument("--limit", type=int, default=None, help="the first N volumes (default: all)")
    parser.add_argument("--mode", choices=("strokes", "clicks"), default="strokes")
    parser.add_argument("--without-background", action="store_true", help="leave out the background stroke")
    parser.add_argument("--out", help="write the rows and the summary as JSON here")
    options = parser.parse_args(argv)
    rows = []
    started = time.perf_counter()
    try:
        cases = case_paths(options.data)[: options.limit]
    except ValueError as error:  # not a data directory: the message names the problem
        raise SystemExit(str(error)) from None
    for image_path, label_path in cases:
        case = load_case(image_path, label_path)
        if case.label is None:
            raise SystemExit(f"{case.name}: no labels to score against")
        truth = np.asarray(case.label, dtype=np.int64)
        num_classes = max(int(truth.max()) + 1, 2)
        for row in score_first_slices(case.image.array, truth, num_classes, options.mode, options.without_background):
            rows.append({"case": case.name, **row})
        print(f"{case.name}: {len(rows)} slices so far", flush=True)
    if not rows:
        raise SystemExit(f"{options.data}: no labelled slice to draw on")
    summary = {
        "data": options.data,
        "mode": options.mode,
        "without_background": options.without_background,
        "slices": len(rows),
        "mean_dice": float(np.mean([r["dice"] for r in rows])),
        "mean_flooded_pixels": float(np.mean([r["flooded_pixels"] for r in rows])),
        "seconds": time.perf_counter() - started,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(summary, indent=1))
    if options.out:
        with open(options.out, "w", encoding="utf-8") as handle:
            json.dump({"summary": summary, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
