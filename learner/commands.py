"""``scribbleflow train``, ``evaluate``, ``bench offline`` and ``bench propagate`` (argument
parsing only; the work is in learner/train.py and learner/bench/). The modules doing the work
import torch, so they are imported inside the command functions: ``--help`` stays fast."""

from __future__ import annotations

import argparse

METHOD_CHOICES = ("pce", "pce_crf", "attention", "distill", "full")  # offline methods (objective.METHODS minus online)
# Copies of learner.device.PRECISIONS and learner.postprocess.POSTPROCESSING, kept here so that
# parsing imports neither torch nor scipy; tests assert that they match.
PRECISION_CHOICES = ("auto", "bf16", "fp32")
POSTPROCESS_CHOICES = ("largest_component", "none")  # the first is the default


def _channels(text: str) -> tuple[int, ...]:
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if len(channels) < 2 or min(channels) < 1:
        raise argparse.ArgumentTypeError("need at least two positive channel counts")
    return channels


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``bench offline``; defaults live in TrainSettings."""
    parser.add_argument("--train", required=True, help="training directory (*.h5 or images/ + labels/)")
    parser.add_argument("--val", required=True, help="validation directory: best-checkpoint selection only")
    parser.add_argument("--method", required=True, choices=METHOD_CHOICES)
    parser.add_argument("--minutes", type=float, default=None,
                        help="training-time budget in minutes (validation excluded); default 10 without --max-iterations")
    parser.add_argument("--max-iterations", type=int, default=None, help="iteration cap (with or without --minutes)")
    parser.add_argument("--size", type=int, default=None,
                        help="training slice size (multiple of 16); default: the data's median in-plane extent, "
                             "at most 128 on CPU and 256 on CUDA")
    parser.add_argument("--batch", type=int, default=None, help="slices per iteration")
    parser.add_argument("--channels", type=_channels, default=None,
                        help="UNet channels per level, e.g. 16,32,64,128,256 (the default)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=None)
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (poly schedule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=None,
                        help="validate every N iterations (default: about 8 times per run)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: max label + 1 in the data")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                        help="auto (default): bf16 autocast where the device computes bf16 natively, else fp32")
    parser.add_argument("--postprocess", choices=POSTPROCESS_CHOICES, default=None,
                        help="largest_component (default): keep each class's largest 3D component in every "
                             "evaluation (one structure per class); none: raw arg-max")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace):
    """TrainSettings from the shared options; options left out keep TrainSettings' defaults."""
    from learner.train import TrainSettings  # start-up cost: torch only when a command runs

    given = {
        "minutes": args.minutes,
        "max_iterations": args.max_iterations,
        "size": args.size,
        "batch_size": args.batch,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "val_every": args.val_every,
        "num_classes": args.num_classes,
        "device": args.device,
        "channels": args.channels,
        "precision": args.precision,
        "postprocess": args.postprocess,
    }
    settings = TrainSettings(method=args.method, seed=args.seed, progress_bar=not args.no_progress,
                             **{k: v for k, v in given.items() if v is not None})
    if args.minutes is None and args.max_iterations is not None:
        settings.minutes = None  # an iteration cap alone: no time budget
    return settings


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p]
    if len(parts) != 3 or min(parts) < 2:
        raise argparse.ArgumentTypeError("expected a (z, y, x) shape such as 155,240,240")
    return parts[0], parts[1], parts[2]


def _run_bench_propagate(args: argparse.Namespace) -> int:
    from learner.bench import propagate as bench  # start-up cost: torch only when run

    if args.data:
        num_classes = args.num_classes or bench.dataset_num_classes(args.data)
        total = len(bench.case_paths(args.data))
        cases = bench.iter_data_cases(args.data)
        source = str(args.data)
    else:
        shape = bench.LARGE_SHAPE if args.synthetic_large else args.synthetic_shape
        num_classes = args.num_classes or 4
        total = args.synthetic_count
        cases = bench.iter_synthetic_cases(shape, args.synthetic_count, num_classes)
        source = f"synthetic {'x'.join(map(str, shape))}"
    result = bench.run_benchmark(
        cases,
        num_classes=num_classes,
        slices=args.slices,
        kind=args.input,
        total=total,
        repeats=args.repeats,
        seed=args.seed,
        progress=not args.no_progress,
    )
    result["data"] = source
    path = bench.write_json(result, args.out)
    calibration = result["calibration"]
    print(
        f"{source}: K={args.slices} {args.input}: mean Dice {result['mean_dice']:.3f} "
        f"{ {k: round(v, 3) for k, v in result['per_class'].items()} }, "
        f"latency p50 {result['latency_p50_s']:.3f} s p95 {result['latency_p95_s']:.3f} s, "
        f"Dice confident/rest {calibration['dice_confident']} / {calibration['dice_rest']} -> {path}"
    )
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from learner.bench.offline import run_training  # start-up cost: torch only when run

    settings = settings_from_args(args)
    settings.checkpoint = args.out
    report = run_training(settings, args.train, args.val, test_dir=None, threads=args.threads)
    print(f"best validation mean Dice {report['val']['mean_dice']:.4f} at iteration "
          f"{report['best_iteration']} of {report['iterations']}; checkpoint {args.out}")
    return 0


def _run_bench_offline(args: argparse.Namespace) -> int:
    from learner.bench.offline import run_offline_benchmark  # start-up cost: torch only when run

    report = run_offline_benchmark(settings_from_args(args), args.train, args.val, args.test, args.out,
                                   checkpoint=args.checkpoint, threads=args.threads)
    print(f"{report['method']}: test mean Dice {report['test']['mean_dice']:.4f}, "
          f"val {report['val']['mean_dice']:.4f}, {report['iterations']} iterations -> {args.out}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from learner.bench.offline import evaluate_checkpoint, write_report_json  # start-up cost

    report = evaluate_checkpoint(args.checkpoint, args.data, postprocess=args.postprocess,
                                 device=args.device, threads=args.threads)
    if args.out:
        write_report_json(report, args.out)
    per_class = ", ".join(f"{c}: {v['dice']:.3f}" for c, v in report["scores"]["per_class"].items())
    print(f"{report['checkpoint']} on {args.data}: mean Dice {report['scores']['mean_dice']:.4f} ({per_class})"
          + (f" -> {args.out}" if args.out else ""))
    return 0


def register(subparsers, bench_subparsers) -> None:
    train = subparsers.add_parser("train", help="train a segmentation model offline from scribbles or labels")
    add_training_arguments(train)
    train.add_argument("--out", required=True, help="checkpoint path (best on validation)")
    train.set_defaults(func=_run_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="score a checkpoint on a labelled directory (3D Dice, HD95 per class) to JSON")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint written by train or bench offline")
    evaluate.add_argument("--data", required=True, help="directory with dense labels (*.h5 or images/ + labels/)")
    evaluate.add_argument("--postprocess", choices=POSTPROCESS_CHOICES, default=None,
                          help="as in train (default: what the checkpoint was validated with, "
                               f"{POSTPROCESS_CHOICES[0]} for older checkpoints)")
    evaluate.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    evaluate.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    evaluate.add_argument("--out", default=None, help="result JSON path (default: print only)")
    evaluate.set_defaults(func=_run_evaluate)

    bench = bench_subparsers.add_parser(
        "offline", help="train one method under a budget, then score val and test (3D Dice, HD95) to JSON")
    add_training_arguments(bench)
    bench.add_argument("--test", required=True, help="test directory (never used for model selection)")
    bench.add_argument("--out", required=True, help="result JSON path")
    bench.add_argument("--checkpoint", default=None, help="checkpoint path (default: the JSON path with .pt)")
    bench.set_defaults(func=_run_bench_offline)
    _register_bench_propagate(bench_subparsers)


def _register_bench_propagate(bench_subparsers) -> None:
    parser = bench_subparsers.add_parser(
        "propagate",
        help="proxy Dice, confidence calibration and latency of slice propagation",
        description="Simulate sparse input on K slices of each volume, propagate it to a 3D proxy "
        "and score it against the ground truth.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="directory of ACDC-style *.h5 or images/ + labels/ NIfTI volumes")
    source.add_argument(
        "--synthetic-large",
        action="store_true",
        help="synthetic moving/deforming volumes of 155 x 240 x 240 voxels (latency benchmark)",
    )
    source.add_argument("--synthetic-shape", type=_shape, help="synthetic volumes of this (z,y,x) shape")
    parser.add_argument("--slices", type=int, required=True, help="annotated slices per volume (K)")
    parser.add_argument("--input", choices=("mask", "scribble"), default="mask")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--num-classes", type=int, help="default: 1 + largest label in the data (4 for synthetic)")
    parser.add_argument("--synthetic-count", type=int, default=5, help="synthetic volumes (default 5)")
    parser.add_argument("--repeats", type=int, default=1, help="timed propagations per volume (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="scribble simulation seed")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=_run_bench_propagate)
