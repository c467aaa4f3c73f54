"""Job pickup latency and training throughput: the embedded executor against Celery workers.

    python -m learner.bench.distributed --broker redis://127.0.0.1:6379/0 --out dist.json

For each mode (``embedded``, ``celery`` with 1 and with 2 worker processes, each worker
`scribbleflow worker --concurrency 1` as a subprocess):
- pickup latency: ``--latency-jobs`` jobs submitted one after the other to idle workers;
  latency = the job's start (stamped where it runs) minus its submission;
- throughput: ``--throughput-jobs`` jobs (different images, so none supersedes another)
  submitted at once; jobs per minute from the first submission to the last finish.
Jobs are real online updates of a small network on synthetic volumes (``--steps`` steps at
``--size``). Writes JSON with the machine's CPU model and load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from learner.device import cpu_model_name


def _write_case(folder: Path, seed: int) -> tuple[str, str]:
    """A (z, y, x) image with a bright disc and its label, as .npy files."""
    rng = np.random.default_rng(seed)
    z, y, x = 6, 64, 64
    cy, cx = rng.uniform(20, 44, size=2)
    yy, xx = np.mgrid[:y, :x]
    disc = (np.hypot(yy - cy, xx - cx) < 12).astype(np.uint8)
    label = np.repeat(disc[None], z, axis=0)
    image = (label * 0.6 + rng.normal(0, 0.1, label.shape)).astype(np.float32)
    np.save(folder / f"image-{seed}.npy", image)
    np.save(folder / f"label-{seed}.npy", label)
    return str(folder / f"image-{seed}.npy"), str(folder / f"label-{seed}.npy")


def _jobs(folder: Path, count: int, steps: int, size: int, first_seed: int):
    from learner.jobs import TrainJob

    jobs = []
    for seed in range(first_seed, first_seed + count):
        image, label = _write_case(folder, seed)
        jobs.append(TrainJob(project_id="1", image_id=str(seed), round_id="1", image_path=image,
                             proxy_labels_path=label, num_classes=2, steps=steps,
                             settings={"size": size, "replay_capacity": 0}, registry_root=str(folder / "registry")))
    return jobs


def _measure(executor, folder: Path, args, seed_base: int) -> dict:
    latencies = []
    for job in _jobs(folder, args.latency_jobs, args.steps, args.size, seed_base):
        executor.submit(job)
        status = executor.wait(job.job_id, timeout=600)
        if str(status.state) != "succeeded":
            raise RuntimeError(f"job failed: {status}")
        latencies.append(status.started_at - status.submitted_at)
    batch = _jobs(folder, args.throughput_jobs, args.steps, args.size, seed_base + 1000)
    started = time.time()
    for job in batch:
        executor.submit(job)
    finished = [executor.wait(job.job_id, timeout=1800) for job in batch]
    if any(str(s.state) != "succeeded" for s in finished):
        raise RuntimeError(f"jobs failed: {[s.error for s in finished if s.error]}")
    seconds = max(s.finished_at for s in finished) - started
    return {
        "pickup_latency_p50_s": float(np.percentile(latencies, 50)),
        "pickup_latency_p95_s": float(np.percentile(latencies, 95)),
        "pickup_latencies_s": latencies,
        "throughput_jobs_per_minute": len(batch) * 60.0 / seconds,
        "throughput_seconds": seconds,
    }


def _start_workers(count: int, env: dict, logs: Path) -> list[subprocess.Popen]:
    scribbleflow = str(Path(sys.executable).parent / "scribbleflow")
    workers = []
    for index in range(count):
        log = (logs / f"worker-{index}.log").open("ab")
        workers.append(subprocess.Popen(
            [scribbleflow, "worker", "--queues", "train", "--concurrency", "1", "--hostname", f"bench{index}@%h"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    for index in range(count):
        deadline = time.monotonic() + 180
        while " ready." not in (logs / f"worker-{index}.log").read_text(errors="replace"):
            if time.monotonic() > deadline or workers[index].poll() is not None:
                raise RuntimeError(f"worker {index} did not start: {(logs / f'worker-{index}.log').read_text()}")
            time.sleep(0.2)
    return workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="Redis URL")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--latency-jobs", type=int, default=10)
    parser.add_argument("--throughput-jobs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (OMP_NUM_THREADS)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    from learner.celery_executor import CeleryExecutor
    from learner.executors import EmbeddedExecutor
    from learner.networks import NetworkConfig
    from learner.registry import ModelRegistry
    from learner.worker import WorkerSettings

    torch.set_num_threads(args.threads)
    report = {"cpu": cpu_model_name(), "cpus": os.cpu_count(), "load_before": os.getloadavg(),
              "precision": "fp32/bf16 as learner.device picks (auto)", "torch_threads_per_job": args.threads,
              "steps": args.steps, "size": args.size, "latency_jobs": args.latency_jobs,
              "throughput_jobs": args.throughput_jobs, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ModelRegistry(folder / "registry").create_initial(NetworkConfig(num_classes=2, channels=(8, 16, 32, 64)))
        executor = EmbeddedExecutor()
        report["modes"]["embedded"] = _measure(executor, folder, args, 0)
        executor.shutdown()
        for count in (1, 2):
            prefix = f"bench-{uuid.uuid4().hex[:8]}."
            env = {**os.environ, "SCRIBBLEFLOW_BROKER_URL": args.broker, "SCRIBBLEFLOW_QUEUE_PREFIX": prefix,
                   "OMP_NUM_THREADS": str(args.threads)}
            workers = _start_workers(count, env, folder)
            executor = CeleryExecutor(WorkerSettings(broker_url=args.broker, queue_prefix=prefix), poll_interval=0.1)
            try:
                report["modes"][f"celery_{count}_worker{'s' if count > 1 else ''}"] = _measure(
                    executor, folder, args, 100 * count)
            finally:
                executor.shutdown()
                for worker in workers:
                    os.killpg(worker.pid, signal.SIGTERM)
                for worker in workers:
                    worker.wait(timeout=120)
    report["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for mode, result in report["modes"].items():
        print(f"{mode}: pickup p50 {result['pickup_latency_p50_s']:.3f} s, p95 {result['pickup_latency_p95_s']:.3f} s, "
              f"{result['throughput_jobs_per_minute']:.1f} jobs/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
