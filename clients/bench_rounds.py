"""`python -m clients.bench_rounds`: the round computation with the corrective annotator, without a server.

For each volume of a data directory, the simulated annotator (``clients.annotator``) corrects
the answer of ``registration.round.compute_round`` for a few rounds on the slices the
policy picks, with a stand-in for the model: ``uniform`` (an untrained model), ``truth``
(the ground truth one-hot: a perfect model) or ``noisy`` (the truth shifted by a few pixels
with a class dropped on a third of the slices, 0.85 one-hot + 0.15 uniform: a fair model), or
a trained network (``--checkpoint FILE``: its predictions, trusted as far as the validation
Dice it reports, or ``--validation-dice``).
Per round it reports the mean foreground Dice of the fused answer and of the proxy alone,
the model's weight, where the suggestion for the next round lands (wrong voxels on the
suggested slice against the mean over the undrawn slices (a random pick) and the worst one),
how the wrong voxels split between the planes drawn so far and the others (and the share of
the voxels those planes hold), the rounds that lowered the fused Dice, the first rounds that
left it below the model's opening (the answer the user corrected), and the time of each phase
of the computation (``registration.round.ROUND_PHASES``; the summary's ``phase_ms_mean``).
Per volume, the stream benchmark's effort (``clients.stream_metrics``): ground-truth boundary
pixels of the planes the annotator drew on until the answer first reaches ``--target-dice``
(none when the model's opening does; all of them when it never does), against those of every
z plane.

    python -m clients.bench_rounds --data ../shared/data/acdc/val --limit 4 --rounds 4 --model uniform
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clients import stream_metrics as sm
from clients.annotator import (
    NOTHING,
    answer_before_first_round,
    mean_foreground_dice,
    next_correction,
    structures_only,
)
from learner.data import case_paths, load_case
from learner.metrics import dice_per_class
from registration.io.volume import UNLABELLED
from registration.residual import opening_suggestion
from registration.round import ROUND_PHASES, compute_round

MODELS = ("uniform", "truth", "noisy")


def stand_in_model(kind: str, truth: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (C, z, y, x) probabilities of the stand-in model ``kind`` (module docstring)."""
    shape = truth.shape
    if kind == "uniform":
        return np.full((num_classes,) + shape, 1.0 / num_classes, dtype=np.float32)
    labels = truth.copy()
    if kind == "noisy":
        labels = np.roll(labels, shift=(3, 3), axis=(1, 2))
        for z in rng.choice(shape[0], size=max(1, shape[0] // 3), replace=False):
            dropped = int(rng.integers(1, num_classes))
            labels[z][labels[z] == dropped] = 0
    one_hot = np.stack([(labels == c).astype(np.float32) for c in range(num_classes)])
    if kind == "truth":
        return one_hot
    return (0.85 * one_hot + 0.15 / num_classes).astype(np.float32)


def simulate_volume(
    image: np.ndarray, truth: np.ndarray, num_classes: int, model: np.ndarray, rounds: int, policy: str,
    rng: np.random.Generator, validation_dice: float | None = None,
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0), first_without_background: bool = False,
) -> list[dict]:
    """Rows per round: slice, Dice of fused and proxy, model weight, suggestion hit numbers.
    ``spacing_zyx``: the image's voxel spacing (mm), as the server passes it.
    ``first_without_background``: round 1 draws the structures only (no background stroke)."""
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    planes: set[tuple[int, int]] = set()
    answer = answer_before_first_round(model.argmax(axis=0))
    suggestion = opening_suggestion(model, reliability=0.0, spacing_zyx=spacing_zyx)
    model_dice = opening_dice(model, truth, num_classes)
    dice_shown = model_dice
    rows = []
    for number in range(rounds):
        choice = next_correction(policy, truth, answer, suggestion, planes, rng, num_classes)
        if choice is None:  # nothing left to fix on any plane
            break
        axis, index, drawing, fallback = choice
        if first_without_background and number == 0:
            drawing = structures_only(drawing)
        planes.add((axis, index))
        np.moveaxis(seeds, axis, 0)[index][drawing != UNLABELLED] = drawing[drawing != UNLABELLED]
        started = time.perf_counter()
        phase_seconds = dict.fromkeys(ROUND_PHASES, 0.0)
        result = compute_round(
            image, spacing_zyx, seeds, planes, model, num_classes,
            previous_segmentation=answer.astype(np.uint8) if (answer != NOTHING).all() else None,
            validation_dice=validation_dice, phase_seconds=phase_seconds,
        )
        seconds = time.perf_counter() - started
        answer = result.segmentation.astype(np.int64)
        suggestion = result.suggestion
        wrong = np.moveaxis(answer != truth, 0 if suggestion is None else suggestion.axis, 0).sum(axis=(1, 2))
        on_drawn = drawn_plane_mask(truth.shape, planes)
        along = 0 if suggestion is None else suggestion.axis
        undrawn = [i for i in range(wrong.size) if (along, i) not in planes]
        rows.append({
            "round": number + 1,
            "slice": [axis, index],
            "fallback": fallback,
            "stroke_voxels": int((drawing != UNLABELLED).sum()),
            "dice_model": model_dice,
            "dice_shown": dice_shown,  # of the answer this round corrected (round 1: the opening)
            "dice_fused": mean_foreground_dice(dice_per_class(answer, truth, num_classes)),
            "dice_proxy": mean_foreground_dice(dice_per_class(result.proxy_labels.astype(np.int64), truth,
                                                              num_classes)),
            "model_weight": result.model_weight,
            "suggested_wrong": None if suggestion is None else int(wrong[suggestion.slice]),
            "random_wrong": float(np.mean(wrong[undrawn])) if undrawn else None,
            "worst_wrong": int(np.max(wrong[undrawn])) if undrawn else None,
            "wrong_on_drawn": int((on_drawn & (answer != truth)).sum()),
            "wrong_elsewhere": int((~on_drawn & (answer != truth)).sum()),
            "drawn_voxel_share": float(on_drawn.mean()),
            "seconds": seconds,
            "phase_seconds": phase_seconds,
        })
        dice_shown = rows[-1]["dice_fused"]
    return rows


def opening_dice(model: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice of the model's opening (its argmax) against ``truth``."""
    return mean_foreground_dice(dice_per_class(model.argmax(axis=0), truth, num_classes))


def drawn_plane_mask(shape: tuple[int, ...], planes: set[tuple[int, int]]) -> np.ndarray:
    """bool ``shape``: True on the drawn (axis, index) planes."""
    mask = np.zeros(shape, dtype=bool)
    for axis, index in planes:
        np.moveaxis(mask, axis, 0)[index] = True
    return mask


def volume_effort(truth: np.ndarray, rows: list[dict], target_dice: float, opening: float) -> dict:
    """One volume's effort as the stream benchmark's annotator spends it (module docstring):
    nothing when the opening (the model's answer, of Dice ``opening``) already reaches
    ``target_dice``; a round with nothing to draw on its plane is not counted; counting stops
    at the first round that reaches the target."""
    touched = []
    reached = opening >= target_dice
    for row in [] if reached else rows:
        if row["stroke_voxels"] > 0:
            touched.append(tuple(row["slice"]))
        if row["dice_fused"] >= target_dice:
            reached = True
            break
    return {
        "reached_target": reached,
        "final_dice": rows[-1]["dice_fused"] if rows else opening,
        "touched_boundary_pixels": sm.touched_boundary_pixels(truth, touched),
        "full_boundary_pixels": int(sm.boundary_pixels_per_slice(truth, 0).sum()),
    }


def rounds_lowering_dice(rows: list[dict]) -> int:
    """Rounds after the first that lowered the fused Dice (``stream_metrics.lowered``) below the
    previous round's (their ``dice_shown``)."""
    return int(sum(r["round"] > 1 and sm.lowered(r["dice_shown"], r["dice_fused"]) for r in rows))


def first_rounds_below_opening(rows: list[dict]) -> int:
    """Volumes whose round 1 lowered the fused Dice below the model's opening (``dice_shown`` of
    round 1): the user drew, and the answer got worse than what they saw."""
    return int(sum(r["round"] == 1 and sm.lowered(r["dice_shown"], r["dice_fused"]) for r in rows))


def final_rows(rows: list[dict]) -> list[dict]:
    """The last round's row of each volume (rows in order; a volume's rounds count from 1)."""
    following = [*rows[1:], None] if rows else []
    return [row for row, after in zip(rows, following, strict=True) if after is None or after["round"] == 1]


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict], efforts: list[dict]) -> dict:
    """The benchmark's summary of ``rows`` (all volumes, in order) and the volumes' ``efforts``
    (``volume_effort``, one per volume); a volume whose opening needed no round has no rows."""
    last = final_rows(rows)
    hits = [r for r in rows if r["suggested_wrong"] is not None and r["random_wrong"] is not None]
    wrong_on_drawn_shares = [
        r["wrong_on_drawn"] / (r["wrong_on_drawn"] + r["wrong_elsewhere"])
        for r in last if r["wrong_on_drawn"] + r["wrong_elsewhere"] > 0
    ]
    touched = sum(e["touched_boundary_pixels"] for e in efforts)
    full = sum(e["full_boundary_pixels"] for e in efforts)
    return {
        "volumes": len(efforts),
        # a volume whose opening left nothing to fix ends with the opening's Dice
        "final_dice_fused": _mean([e["final_dice"] for e in efforts]),
        "final_dice_proxy": _mean([r["dice_proxy"] for r in last]),
        "dice_model": _mean([r["dice_model"] for r in last]),
        "rounds_run": len(rows),
        "rounds_fused_below_model": int(sum(r["dice_fused"] < r["dice_model"] for r in rows)),
        "fused_minus_proxy_all_rounds": _mean([r["dice_fused"] - r["dice_proxy"] for r in rows]),
        "mean_model_weight": _mean([r["model_weight"] for r in rows]),
        "suggested_slice_wrong_voxels": _mean([r["suggested_wrong"] for r in hits]),
        "random_undrawn_slice_wrong_voxels": _mean([r["random_wrong"] for r in hits]),
        "worst_undrawn_slice_wrong_voxels": _mean([r["worst_wrong"] for r in hits]),
        "suggestion_hit_rate": _mean([r["suggested_wrong"] > 0 for r in hits]),
        "round_seconds_mean": _mean([r["seconds"] for r in rows]),
        # where a round's computation goes (registration.round.ROUND_PHASES), ms a round
        "phase_ms_mean": {name: 1000.0 * _mean([r["phase_seconds"][name] for r in rows]) if rows else None
                          for name in ROUND_PHASES},
        "rounds_lowering_dice": rounds_lowering_dice(rows),
        "first_rounds_below_opening": first_rounds_below_opening(rows),
        # residual: rounds whose suggestion was missing, already drawn or held nothing worth a stroke
        "fallbacks": int(sum(r["fallback"] for r in rows)),
        # where the error left sits, against the share of the voxels that lie on drawn planes
        # (both means over the volumes of their last round's share)
        "final_wrong_on_drawn_share": _mean(wrong_on_drawn_shares),
        "final_drawn_voxel_share": _mean([r["drawn_voxel_share"] for r in last]),
        "reached_target": int(sum(e["reached_target"] for e in efforts)),
        "effort_touched_boundary_pixels": touched,
        "effort_full_boundary_pixels": full,
        "effort_reduction_pct": sm.effort_reduction_pct(touched, full),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ACDC HDF5 or images/ + labels/ NIfTI directory")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", choices=MODELS, default="uniform")
    parser.add_argument("--checkpoint", help="a trained model (learner checkpoint) instead of --model")
    parser.add_argument("--validation-dice", type=float, default=None,
                        help="the checkpoint's validation Dice for the fusion (default: what it reports)")
    parser.add_argument("--policy", choices=("residual", "random", "oracle"), default="residual")
    parser.add_argument("--target-dice", type=float, default=0.9,
                        help="effort counts the planes touched until the answer first reaches this Dice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-without-background", action="store_true",
                        help="round 1 draws the structures only, as a person who skips the background")
    parser.add_argument("--out", help="write the rows and the summary as JSON here")
    options = parser.parse_args(argv)
    network, network_config, validation_dice, size = None, None, None, None
    if options.checkpoint:
        from learner.checkpoints import load_checkpoint

        network, network_config, metadata = load_checkpoint(options.checkpoint, device="cpu")
        if "size" not in metadata:
            parser.error(f"{options.checkpoint}: the checkpoint does not say its training size")
        size = int(metadata["size"])
        validation_dice = options.validation_dice if options.validation_dice is not None else metadata.get("val_mean_dice")
    rows: list[dict] = []
    efforts: list[dict] = []
    for image_path, label_path in case_paths(options.data)[: options.limit]:
        case = load_case(image_path, label_path)
        truth = np.asarray(case.label, dtype=np.int64)
        num_classes = max(int(truth.max()) + 1, 2) if network is None else network_config.num_classes
        if int(truth.max()) >= num_classes:
            raise SystemExit(f"{case.name}: labels up to {int(truth.max())}, the network predicts {num_classes} classes")
        # seeded by the volume's place (as when every volume ran all its rounds), not by the
        # rows so far: a volume that ends early must not change the next one's draws
        rng = np.random.default_rng([options.seed, len(efforts) * options.rounds])
        if network is not None:
            from learner.inference import predict_volume

            model = predict_volume(network, case.image.array, size=size, device="cpu")
        else:
            model = stand_in_model(options.model, truth, num_classes, rng)
        volume_rows = simulate_volume(case.image.array, truth, num_classes, model, options.rounds, options.policy,
                                      rng, validation_dice, case.image.spacing_zyx, options.first_without_background)
        for row in volume_rows:
            rows.append({"case": case.name, **row})
            print(json.dumps(rows[-1]), flush=True)
        efforts.append({"case": case.name, **volume_effort(truth, volume_rows, options.target_dice,
                                                            opening_dice(model, truth, num_classes))})
    summary = {"model": options.checkpoint or options.model, "validation_dice": validation_dice,
               "policy": options.policy, "rounds": options.rounds,
               "first_without_background": options.first_without_background, "target_dice": options.target_dice,
               **summarize(rows, efforts)}
    print_and_write(summary, rows, options.out, {"volumes": efforts})


def data_paths(directory: str, limit: int | None) -> list[tuple[Path, Path | None]]:
    """The first ``limit`` (image, label) paths of ``directory``; a directory that holds none
    ends the benchmark with the message that names the problem."""
    try:
        return case_paths(directory)[:limit]
    except ValueError as error:
        raise SystemExit(str(error)) from None


def print_and_write(summary: dict, rows: list[dict], out: str | None, extra: dict | None = None) -> None:
    """Print a benchmark's summary; write it, its rows and ``extra`` as JSON to ``out`` when given."""
    print(json.dumps(summary, indent=1))
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump({"summary": summary, "rows": rows, **(extra or {})}, handle, indent=1)


if __name__ == "__main__":
    main()
