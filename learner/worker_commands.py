"""``scribbleflow worker``: a Celery worker of distributed mode (learner/worker.py)."""

from __future__ import annotations

import argparse


def _queues(text: str) -> list[str]:
    from learner.worker import QUEUES

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"queues must be among {', '.join(QUEUES)}, got {text!r}")
    return names


def _run_worker(args: argparse.Namespace) -> int:
    from learner.worker import WorkerSettings, create_app

    settings = WorkerSettings()
    app = create_app(settings)
    argv = [
        "worker",
        "--queues", ",".join(settings.queue(name) for name in args.queues),
        "--concurrency", str(args.concurrency),
        "--pool", "prefork",
        "--prefetch-multiplier", "1",
        "--loglevel", args.loglevel,
        "--without-gossip", "--without-mingle",
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def register(subparsers, bench_subparsers) -> None:
    worker = subparsers.add_parser(
        "worker", help="run a Celery worker that trains jobs from the broker (distributed mode)",
        description="Run a Celery worker on SCRIBBLEFLOW_BROKER_URL (Redis). Jobs are acknowledged when they "
                    "end, one per process at a time.",
    )
    worker.add_argument("--queues", type=_queues, default=["train"],
                        help="comma-separated queues to consume: train, register, infer (default: train)")
    worker.add_argument("--concurrency", type=int, default=1,
                        help="worker processes (default 1: training uses every core of its process)")
    worker.add_argument("--loglevel", default="info", choices=("debug", "info", "warning", "error"))
    worker.add_argument("--hostname", default=None, help="worker name (default: celery@HOST)")
    worker.set_defaults(func=_run_worker)
