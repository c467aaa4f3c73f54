"""`python -m clients.bench_atlas`: how good an opening the atlas proxy gives along a stream, without a server.

Before a project's first trained model, a session opens with the latest accepted image's
labels carried onto the new image by registration (``registration.round.atlas_opening``,
``server.services.predictions``), and later too when the atlas is expected to beat the model
(``registration.opening_choice``, which weighs the images' similarity after registration). For each volume of a data directory after the first, in
stream order, this carries the previous volume's ground truth onto it and scores the argmax
against its own truth (mean foreground Dice), with the registration similarity. Accepted labels are not the truth, so this is
an upper bound of what the server's atlas opening gives; compare it with the opening Dice of
the model versions in a stream benchmark's JSON.

    python -m clients.bench_atlas --data ../shared/data/hippocampus/train --limit 5 --out atlas.json
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from clients.annotator import mean_foreground_dice
from clients.bench_rounds import data_paths, print_and_write
from learner.data import load_case
from learner.metrics import dice_per_class
from registration.round import atlas_opening


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ACDC HDF5 or images/ + labels/ NIfTI directory")
    parser.add_argument("--limit", type=int, default=None, help="the first N volumes of the stream (default: all)")
    parser.add_argument("--out", help="write the rows and the summary as JSON here")
    options = parser.parse_args(argv)
    paths = data_paths(options.data, options.limit)
    if len(paths) < 2:
        raise SystemExit(f"{options.data}: need at least two labelled volumes")
    rows = []
    started = time.perf_counter()
    previous = load_case(*paths[0])
    for image_path, label_path in paths[1:]:
        case = load_case(image_path, label_path)
        if case.label is None or previous.label is None:
            raise SystemExit(f"{case.name}: no labels to carry or score against")
        truth = np.asarray(case.label, dtype=np.int64)
        num_classes = max(int(truth.max()), int(np.max(previous.label))) + 1
        began = time.perf_counter()
        carried = atlas_opening(previous.image, np.asarray(previous.label, dtype=np.int64), case.image, num_classes)
        seconds = time.perf_counter() - began
        dice = dice_per_class(carried.probabilities.argmax(axis=0), truth, num_classes)
        rows.append({"case": case.name, "atlas": previous.name, "dice": mean_foreground_dice(dice),
                     "similarity": carried.similarity, "seconds": seconds})
        print(f"{case.name} from {previous.name}: Dice {rows[-1]['dice']:.3f}, similarity "
              f"{carried.similarity:.3f} ({seconds:.1f} s)", flush=True)
        previous = case
    summary = {
        "data": options.data,
        "volumes": len(rows),
        "mean_dice": float(np.mean([r["dice"] for r in rows])),
        "seconds": time.perf_counter() - started,
        "cpu": platform.processor() or platform.machine(),
    }
    print_and_write(summary, rows, options.out)


if __name__ == "__main__":
    main()
