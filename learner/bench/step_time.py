"""Seconds per training step of each method, on a synthetic batch (no data needed).

    python -m learner.bench.step_time --methods pce,pce_crf,attention,distill,full \\
        --size 128 --batch 12 --threads 1 --layout channels_last,contiguous --out FILE.json

The batch: uniform-noise images, four horizontal scribble stripes (classes 0..3) on every
slice, random dense labels for ``full`` and, one-hot with weight 1, as the soft targets of
``online`` (the server's online jobs: ``--methods online --batch 4``, soft Dice weight 1). Content barely matters to the cost; the shapes do.
Each (method, layout) pair builds a fresh network, runs ``--warmup`` steps, then times
``--steps`` steps of :func:`learner.train.training_step`. Data loading and augmentation are
not included (the offline benchmark's iterations/second include them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LAYOUTS = ("channels_last", "contiguous")


def synthetic_batch(size: int, batch: int, num_classes: int, seed: int = 0) -> dict:
    import torch

    from registration.io.volume import UNLABELLED

    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, size, size, generator=generator)
    scribble = torch.full((batch, size, size), UNLABELLED, dtype=torch.long)
    stripe = max(1, size // 32)
    for cls in range(num_classes):
        row = (cls + 1) * size // (num_classes + 1)
        scribble[:, row:row + stripe, size // 4: 3 * size // 4] = cls
    label = torch.randint(0, num_classes, (batch, size, size), generator=generator)
    target = torch.nn.functional.one_hot(label, num_classes).permute(0, 3, 1, 2).float()
    return {"image": image, "scribble": scribble, "label": label, "target": target,
            "weight": torch.ones(batch, size, size)}


def time_training_steps(method: str, *, size: int, batch: int, layout: str, precision: str,
                        steps: int, warmup: int, num_classes: int = 4) -> dict:
    import torch

    from learner.device import resolve_precision, select_device
    from learner.networks import build_network
    from learner.objective import ObjectiveWeights, build_objective, network_config_for
    from learner.train import training_step

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    device = select_device(None)
    resolved = resolve_precision(device, precision)
    torch.manual_seed(0)
    model = build_network(network_config_for(method, num_classes)).to(device)
    if layout == "contiguous":
        model = model.to(memory_format=torch.contiguous_format)
    weights = ObjectiveWeights(dice=1.0) if method == "online" else None  # as learner.online.train_online
    objective = build_objective(method, num_classes, weights).to(device)
    objective.bind(model)
    objective.progress = 0.5  # distillation fully ramped up
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = {k: v.to(device) for k, v in synthetic_batch(size, batch, num_classes).items()}
    for _ in range(warmup):
        training_step(model, objective, data, optimizer, resolved)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        training_step(model, objective, data, optimizer, resolved)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"method": method, "layout": layout, "precision": resolved, "device": device.type,
            "seconds_per_step": round(seconds, 4)}


def main(argv: list[str] | None = None) -> int:
    from learner.commands import METHOD_CHOICES, PRECISION_CHOICES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="pce,pce_crf,attention,distill,full")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto")
    parser.add_argument("--layout", default="channels_last", help=f"comma-separated, of {LAYOUTS}")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (printed when omitted)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    layouts = [layout for layout in args.layout.split(",") if layout]
    unknown = [m for m in methods if m not in (*METHOD_CHOICES, "online")] + [x for x in layouts if x not in LAYOUTS]
    if unknown:
        parser.error(f"unknown method or layout: {unknown}")
    if args.steps < 1 or args.warmup < 0 or args.size % 16 or args.batch < 1:
        parser.error("steps >= 1, warmup >= 0, batch >= 1 and size a multiple of 16 are required")

    import torch
    from tqdm import tqdm

    from learner.bench.offline import write_report_json

    torch.set_num_threads(args.threads)
    results = []
    for method, layout in tqdm([(m, x) for m in methods for x in layouts], desc="step time"):
        results.append(time_training_steps(method, size=args.size, batch=args.batch, layout=layout,
                                           precision=args.precision, steps=args.steps, warmup=args.warmup))
    report = {"size": args.size, "batch": args.batch, "threads": args.threads, "steps": args.steps,
              "results": results}
    if args.out:
        write_report_json(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
