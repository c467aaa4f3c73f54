"""Command-line entry points of the registration package: ``scribbleflow bench propagate``."""

from __future__ import annotations

import argparse


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p]
    if len(parts) != 3 or min(parts) < 2:
        raise argparse.ArgumentTypeError("expected a (z, y, x) shape such as 155,240,240")
    return parts[0], parts[1], parts[2]


def register(subparsers, bench_subparsers) -> None:
    del subparsers  # no top-level command
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
    parser.set_defaults(func=run_bench_propagate)


def run_bench_propagate(args) -> int:
    from registration import bench

    if args.data:
        num_classes = args.num_classes or bench.dataset_num_classes(args.data)
        from learner.data import case_paths

        total = len(case_paths(args.data))
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
