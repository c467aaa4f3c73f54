"""Seconds per online training job (``learner.jobs.run_train_job``) on real volumes.

    python -m learner.bench.online_job --train-case A.h5 --val-case B.h5 --size 128 --steps 150

The proxy is the training case's dense label, the confidence 1/(1 + distance to the middle
slice), the user's voxels its scribbles (simulated when the file has none); version 0 is a
random network. Prints CPU and wall seconds per job and the gate's decision.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-case", type=Path, required=True, help="an .h5 or image file with a label")
    parser.add_argument("--train-label", type=Path, default=None, help="label file for a NIfTI training case")
    parser.add_argument("--val-case", type=Path, required=True)
    parser.add_argument("--val-label", type=Path, default=None)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from learner.data import load_case
    from learner.jobs import TrainJob, ValidationImage, run_train_job
    from learner.objective import network_config_for
    from learner.registry import ModelRegistry
    from learner.replay import ReplayBuffer
    from learner.scribbles import simulate_scribbles

    torch.set_num_threads(args.threads)
    train = load_case(args.train_case, args.train_label)
    val = load_case(args.val_case, args.val_label)
    if train.label is None or val.label is None:
        parser.error("both cases need a dense label")
    num_classes = int(max(train.label.max(), val.label.max())) + 1
    root = Path(tempfile.mkdtemp(prefix="online-job-"))
    depth = train.image.array.shape[0]
    distance = np.abs(np.arange(depth) - depth // 2).astype(np.float32)
    confidence = np.broadcast_to((1.0 / (1.0 + distance))[:, None, None], train.label.shape)
    scribble = train.scribble
    if scribble is None:
        scribble = simulate_scribbles(train.label, num_classes=num_classes, seed=0).scribble
    paths = {}
    for key, array in (("image", train.image.array), ("label", train.label), ("confidence", confidence),
                       ("scribble", scribble), ("val-image", val.image.array), ("val-label", val.label)):
        paths[key] = str(root / f"{key}.npy")
        np.save(paths[key], np.ascontiguousarray(array))
    registry = ModelRegistry(root / "registry")
    registry.create_initial(network_config_for("online", num_classes), seed=0)
    job = TrainJob(
        project_id="bench", image_id=train.name, round_id="1", image_path=paths["image"],
        num_classes=num_classes, proxy_labels_path=paths["label"], confidence_path=paths["confidence"],
        scribble_path=paths["scribble"], steps=args.steps,
        validation=[ValidationImage(val.name, paths["val-image"], paths["val-label"])],
        settings={"size": args.size, "batch_size": args.batch},
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_train_job(job, registry, ReplayBuffer(root / "replay", capacity=3), device="cpu")
    report = {
        "size": args.size, "steps": args.steps, "batch": args.batch, "threads": args.threads,
        "cpu_seconds": round(time.process_time() - cpu, 1), "wall_seconds": round(time.perf_counter() - wall, 1),
        "loss_first": round(float(result.losses[0]), 3), "loss_last10": round(float(np.mean(result.losses[-10:])), 3),
        "promoted": result.promoted, "reason": result.reason, "gate": result.gate,
    }
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
