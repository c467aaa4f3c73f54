"""``scribbleflow bench stream`` (argument parsing only; the work is in clients/bench_stream.py).

Heavy imports stay inside the command function so that ``--help`` stays fast."""

from __future__ import annotations

import argparse

POLICY_CHOICES = ("residual", "random", "oracle")  # clients.annotator's slice policies
MODE_CHOICES = ("strokes", "clicks", "labelmap")  # clients.annotator.MODES: how a round is sent


def _run_bench_stream(args: argparse.Namespace) -> int:
    from clients.bench_stream import StreamOptions, run_stream_benchmark

    report = run_stream_benchmark(StreamOptions.from_args(args))
    summary = report["summary"]
    print(f"stream: {summary['volumes']} volumes, {summary['reached_target']} reached {args.target_dice}, "
          f"mean final Dice {summary['mean_final_dice']}, round latency p95 {summary['round_latency_p95_s']} s, "
          f"online holdout Dice {summary['online_holdout_dice']}, errors {summary['errors']} -> {args.out}")
    return 0 if summary["errors"] == 0 else 1


def register(subparsers, bench_subparsers) -> None:
    del subparsers  # no top-level commands here
    bench = bench_subparsers.add_parser(
        "stream", help="annotate an image stream with a simulated annotator through the REST API, to JSON",
        description="Feed a labelled directory through a server (embedded unless --url) with the simulated "
                    "annotator, then score every model version on --holdout.")
    bench.add_argument("--data", required=True, help="the stream: a labelled directory (*.h5 or images/ + labels/)")
    bench.add_argument("--limit", type=int, default=None, help="only the first N volumes of the stream")
    bench.add_argument("--holdout", required=True, help="labelled directory to score the model versions on")
    bench.add_argument("--holdout-limit", type=int, default=None, help="only the first N holdout volumes")
    bench.add_argument("--policy", choices=POLICY_CHOICES, default="residual", help="how a round's slice is chosen")
    bench.add_argument("--mode", choices=MODE_CHOICES, default="strokes", help="how a round is sent")
    bench.add_argument("--max-rounds", type=int, default=10, help="rounds per volume at most")
    bench.add_argument("--target-dice", type=float, default=0.9, help="stop a volume's rounds at this mean Dice")
    bench.add_argument("--annotators", type=int, default=1, help="annotators working at once (own tokens)")
    bench.add_argument("--checkpoint", default=None, help="offline checkpoint imported as the first version")
    bench.add_argument("--url", default=None, help="a running server (default: start an embedded one)")
    bench.add_argument("--token", default=None, help="admin token for --url (default: SCRIBBLEFLOW_TOKEN)")
    bench.add_argument("--no-wait", dest="wait", action="store_false",
                       help="do not wait for an image's accept (and consolidation) job before the next image")
    bench.add_argument("--think-seconds", type=float, default=0.0,
                       help="mean pause before each round, as a person looks and draws "
                            "(each pause drawn uniformly from 0.5 to 1.5 times this, at most 120; default: none)")
    bench.add_argument("--job-timeout", type=float, default=900.0, help="seconds to wait for a job")
    bench.add_argument("--time-limit-minutes", type=float, default=600.0,
                       help="no new image is started after this many minutes")
    bench.add_argument("--no-offline", dest="offline", action="store_false",
                       help="skip the offline model trained on the same labels")
    bench.add_argument("--offline-max-minutes", type=float, default=None,
                       help="stop the offline model's training after this many minutes even if it has "
                            "not reached the online steps (the JSON records the iterations done)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    bench.add_argument("--keep-server-dir", action="store_true", help="keep the embedded server's data directory")
    bench.add_argument("--out", required=True, help="result JSON path")
    bench.add_argument("--plots", default=None, help="folder for the PNG plots")
    bench.set_defaults(func=_run_bench_stream)
