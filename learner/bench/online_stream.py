"""Online learning along a simulated stream, without the server: holdout Dice per image.

    python -m learner.bench.online_stream --train ../shared/data/acdc/train --limit 10 \
        --holdout ../shared/data/acdc/val --holdout-limit 5 --out stream.json

For each training volume in order, what the server would hand the learner:

* every ``--validation-every``-th image is held out (as the server's ``validation_every``):
  its accepted label joins the promotion gate's validation set and it trains nothing
  (until the first one, the gate uses the accepted training images, in-sample, as the
  server does: ``learner.jobs.gate_images``);
* otherwise a **round job** on the registration proxy of ``--mask-slices`` ground-truth
  slices (``registration.propagate.propagate_to_volume``: probabilities and confidence
  map), with the user's scribbles on those slices as hard labels (the file's scribbles, or
  simulated ones), then an **accept job** on the accepted label (``--accepted truth``: the
  ground truth, the stand-in for rounds of corrective scribbles; ``proxy``: the proxy's
  labels). Both go through ``learner.jobs.run_train_job`` exactly as the server builds them:
  the reference version is the one serving when work on the image began, the base the one
  serving when the job starts, the registry and replay buffer are the project's.

After each image the serving version is scored on ``--holdout`` (mean over volumes of the
mean Dice over classes 1..C-1, ``learner.registry.mean_validation_dice``) and on the image
just learned. At the end: forgetting on the first fifth of the trained images (Dice right
after each was learned minus Dice at the end), the gate's verdicts against the holdout Dice
of candidate and serving version (``--score-candidates``), and with ``--offline`` a model
trained from version 0 with the same number of optimiser steps on all final labels at once.
Progress goes to stderr, the report to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from learner.bench.propagate import choose_axis, choose_slices
from learner.data import Case, case_paths, load_case
from learner.jobs import TrainJob, ValidationImage, gate_images, run_train_job
from learner.online import OnlineSettings
from learner.registry import ModelRegistry, ValidationCase, mean_validation_dice
from learner.replay import ReplayBuffer
from registration.io.atomic import write_json_atomic
from registration.io.volume import UNLABELLED
from registration.propagate import SliceAnnotation, propagate_to_volume


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_value(text: str):
    """A --set value: JSON when it parses (numbers, booleans, null), the plain string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def round_inputs(case: Case, num_classes: int, mask_slices: int, seed: int) -> dict[str, np.ndarray]:
    """Proxy probabilities, labels and confidence from ``mask_slices`` ground-truth slices,
    and the user's scribbles on those slices."""
    from learner.scribbles import simulate_scribbles

    label = case.label
    axis = choose_axis(label)
    slices = choose_slices(label, mask_slices, axis)
    annotations = [SliceAnnotation(axis, i, np.take(label, i, axis=axis).astype(np.uint8)) for i in slices]
    proxy = propagate_to_volume(case.image.array, annotations, num_classes, spacing_zyx=case.image.spacing_zyx)
    if case.scribble is not None:
        drawn = np.zeros(label.shape, bool)
        index = [slice(None)] * 3
        for i in slices:
            index[axis] = i
            drawn[tuple(index)] = True
        scribble = np.where(drawn, case.scribble, UNLABELLED).astype(np.uint8)
    else:
        scribble = simulate_scribbles(label, num_classes=num_classes, slices=slices, axis=axis, seed=seed).scribble
    return {
        "proxy_probabilities": np.asarray(proxy.probabilities, np.float32),
        "proxy_labels": np.asarray(proxy.labels, np.uint8),
        "confidence": np.asarray(proxy.confidence, np.float32),
        "scribble": scribble,
    }


def case_dice(model: torch.nn.Module, cases: list[ValidationCase], num_classes: int, size: int) -> float:
    return mean_validation_dice(model, cases, num_classes, size=size, device=torch.device("cpu"))[0]


def offline_baseline(
    cases: list[ValidationCase], registry: ModelRegistry, settings: OnlineSettings, steps: int, num_classes: int,
) -> torch.nn.Module:
    """Version 0 trained with ``steps`` optimiser steps on every final label at once (slices
    drawn uniformly over the pooled images), the online objective and settings otherwise."""
    from learner.online import OnlineExample, PreparedImage, prepare_image, train_online

    model, _, _ = registry.load(0, fresh=True)
    parts = [prepare_image(OnlineExample(c.image, num_classes, accepted_label=c.label), model, settings) for c in cases]
    pooled = PreparedImage(
        images=np.concatenate([p.images for p in parts]),
        targets=np.concatenate([p.targets for p in parts]),
        weights=np.concatenate([p.weights for p in parts]),
        scribble=np.concatenate([p.scribble for p in parts]),
        residual=np.concatenate([p.residual for p in parts]),
        slice_probabilities=np.concatenate([p.slice_probabilities for p in parts]) / len(parts),
    )
    offline = replace_settings(settings, replay_per_batch=0)
    train_online(model, pooled, offline, steps=steps, num_classes=num_classes)
    return model


def replace_settings(settings: OnlineSettings, **changes) -> OnlineSettings:
    return OnlineSettings.from_dict({**settings.to_dict(), **changes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="the stream: a data directory (h5 or images/+labels/)")
    parser.add_argument("--limit", type=int, default=10, help="first N volumes of the stream")
    parser.add_argument("--holdout", type=Path, required=True, help="labelled volumes never trained on")
    parser.add_argument("--holdout-limit", type=int, default=5, help="first N holdout volumes (0: all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per job (default: the server's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an OnlineSettings value, e.g. --set learning_rate=3e-3 (repeatable)")
    parser.add_argument("--validation-every", type=int, default=5, help="hold out every n-th image (0: none)")
    parser.add_argument("--accepted", choices=("truth", "proxy"), default="truth")
    parser.add_argument("--mask-slices", type=int, default=3, help="K ground-truth slices behind the proxy")
    parser.add_argument("--no-round-jobs", action="store_true", help="only the accept job per image")
    parser.add_argument("--offline", action="store_true", help="also train the offline model with the same steps")
    parser.add_argument("--score-candidates", action="store_true",
                        help="holdout Dice of every candidate, to compare with the gate's verdicts")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an offline checkpoint served from the start (warm start), as the server's import")
    parser.add_argument("--consolidate-steps", type=int, default=0,
                        help="after each accept job, a consolidation job of N steps on the replay buffer alone")
    parser.add_argument("--consolidate-jobs", type=int, default=1,
                        help="consolidation jobs after each accept job, one after the other, each through the gate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from learner.objective import network_config_for
    from learner.online import DEFAULT_ONLINE_STEPS

    torch.set_num_threads(args.threads)
    values = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        values[key] = parse_value(value)
    settings = OnlineSettings.from_dict({"seed": args.seed, **values})
    steps = args.steps or DEFAULT_ONLINE_STEPS
    size = settings.size

    stream_paths = case_paths(args.train)[: args.limit]
    holdout_paths = case_paths(args.holdout)
    if args.holdout_limit:
        holdout_paths = holdout_paths[: args.holdout_limit]
    holdout = []
    for image_path, label_path in holdout_paths:
        case = load_case(image_path, label_path)
        holdout.append(ValidationCase(case.name, case.image.array, case.label))
    first = load_case(*stream_paths[0])
    num_classes = int(max(max(int(c.label.max()) for c in holdout), int(first.label.max()))) + 1

    work = Path(tempfile.mkdtemp(prefix="online-stream-"))
    registry = ModelRegistry(work / "registry")
    registry.create_initial(network_config_for("online", num_classes), seed=args.seed)
    if args.checkpoint is not None:
        registry.import_checkpoint(args.checkpoint, num_classes=num_classes)
    replay = ReplayBuffer(work / "replay", settings.replay_capacity, settings.replay_policy, settings.seed)
    cpu = torch.device("cpu")
    v0 = registry.load()[0]  # the serving version at the start: random, or the imported checkpoint
    report: dict = {
        "command": " ".join(sys.argv), "train": str(args.train), "holdout": [c.name for c in holdout],
        "num_classes": num_classes, "steps": steps, "settings": settings.to_dict(), "accepted": args.accepted,
        "round_jobs": not args.no_round_jobs, "consolidate_steps": args.consolidate_steps,
        "consolidate_jobs": args.consolidate_jobs, "threads": args.threads,
        "holdout_dice_v0": case_dice(v0, holdout, num_classes, size), "images": [], "jobs": [],
    }
    log(f"{len(stream_paths)} stream volumes, {len(holdout)} holdout volumes, {num_classes} classes, "
        f"v0 holdout Dice {report['holdout_dice_v0']:.3f}; settings {values or 'defaults'}, steps {steps}")

    validation: list[ValidationImage] = []
    accepted_training: list[ValidationImage] = []  # the gate's images until one is held out
    learned: list[ValidationCase] = []
    final_labels: list[ValidationCase] = []  # what the accept jobs trained on
    after_learning: list[float] = []
    trained = 0
    total_steps = 0
    started = time.perf_counter()

    def save(path: Path, array: np.ndarray) -> str:
        np.save(path, np.ascontiguousarray(array))
        return str(path)

    for position, (image_path, label_path) in enumerate(stream_paths):
        case = load_case(image_path, label_path)
        folder = work / "images" / f"{position:03d}"
        folder.mkdir(parents=True)
        image_file = save(folder / "image.npy", case.image.array)
        truth_file = save(folder / "truth.npy", case.label.astype(np.uint8))
        entry: dict = {"position": position, "name": case.name}
        if args.validation_every and (position + 1) % args.validation_every == 0:
            validation.append(ValidationImage(case.name, image_file, truth_file))
            entry["validation"] = True
            report["images"].append(entry)
            log(f"image {position + 1} {case.name}: held out for the gate ({len(validation)} validation images)")
            continue

        reference = registry.serving_version()
        inputs = round_inputs(case, num_classes, args.mask_slices, args.seed + position)
        files = {name: save(folder / f"{name}.npy", array) for name, array in inputs.items()}
        accepted_file = truth_file if args.accepted == "truth" else files["proxy_labels"]
        common = dict(project_id="stream", image_id=case.name, image_path=image_file, num_classes=num_classes,
                      reference_version=reference, images_seen=trained, steps=steps, settings=settings.to_dict())
        jobs = []
        if not args.no_round_jobs:
            jobs.append(("round", TrainJob(round_id="1", proxy_probabilities_path=files["proxy_probabilities"],
                                           confidence_path=files["confidence"], scribble_path=files["scribble"],
                                           **gate_images(validation, accepted_training), **common)))
        # As in the server, the image counts as accepted from its accept job on.
        accepted_training.append(ValidationImage(case.name, image_file, accepted_file))
        jobs.append(("accept", TrainJob(round_id=f"accept-{case.name}", accepted_label_path=accepted_file,
                                        scribble_path=files["scribble"], **gate_images(validation, accepted_training),
                                        **common)))
        if args.consolidate_steps:
            jobs.extend(("consolidate", TrainJob.consolidation(
                "stream", f"consolidate-{position}-{repeat}", num_classes, **gate_images(validation, accepted_training),
                images_seen=trained + 1, steps=args.consolidate_steps, settings=settings.to_dict()))
                for repeat in range(args.consolidate_jobs))
        for kind, job in jobs:
            wall, cpu_time = time.perf_counter(), time.process_time()
            result = run_train_job(job, registry, replay, device=cpu)
            cpu_seconds = time.process_time() - cpu_time
            row = {"image": position, "kind": kind, "version": result.version, "promoted": result.promoted,
                   "reason": result.reason, "steps": result.steps, "seconds": round(time.perf_counter() - wall, 2),
                   "cpu_seconds": round(cpu_seconds, 2),
                   "train_seconds": round(result.train_seconds, 2),
                   "loss_first": round(result.losses[0], 4), "loss_last": round(float(np.mean(result.losses[-10:])), 4),
                   "gate": result.gate}
            if args.score_candidates:
                row["candidate_holdout_dice"] = case_dice(registry.load(result.version)[0], holdout, num_classes, size)
            report["jobs"].append(row)
            total_steps += result.steps
            log(f"  {kind} job: v{result.version} {'promoted' if result.promoted else 'REJECTED'} "
                f"in {row['seconds']:.1f} s ({row['cpu_seconds']:.1f} CPU s), loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}")
        trained += 1
        serving = registry.load()[0]
        learned.append(ValidationCase(case.name, case.image.array, case.label))
        final_labels.append(ValidationCase(case.name, case.image.array, np.load(accepted_file).astype(np.int64)))
        entry.update(serving_version=registry.serving_version(),
                     holdout_dice=case_dice(serving, holdout, num_classes, size),
                     image_dice=case_dice(serving, learned[-1:], num_classes, size),
                     proxy_dice=case_dice_of_labels(inputs["proxy_labels"], case.label, num_classes))
        after_learning.append(entry["image_dice"])
        report["images"].append(entry)
        log(f"image {position + 1} {case.name} ({trained} trained): holdout Dice {entry['holdout_dice']:.3f}, "
            f"on itself {entry['image_dice']:.3f}, serving v{entry['serving_version']}, "
            f"{time.perf_counter() - started:.0f} s so far")

    serving = registry.load()[0]
    fifth = max(1, len(learned) // 5)
    at_end = [case_dice(serving, [c], num_classes, size) for c in learned[:fifth]]
    job_seconds = [j["seconds"] for j in report["jobs"]]
    accept_seconds = [j["seconds"] for j in report["jobs"] if j["kind"] == "accept"]
    report["summary"] = {
        "trained_images": trained,
        "final_holdout_dice": report["images"][-1].get("holdout_dice") if trained else None,
        "holdout_dice_by_trained_images": {str(i + 1): e["holdout_dice"] for i, e in
                                           enumerate(e for e in report["images"] if "holdout_dice" in e)},
        "forgetting": float(np.mean(after_learning[:fifth]) - np.mean(at_end)) if learned else None,
        "total_steps": total_steps,
        "job_seconds_mean": float(np.mean(job_seconds)) if job_seconds else None,
        "job_seconds_p95": float(np.percentile(job_seconds, 95)) if job_seconds else None,
        "accept_job_seconds_p95": float(np.percentile(accept_seconds, 95)) if accept_seconds else None,
        "job_cpu_seconds_mean": float(np.mean([j["cpu_seconds"] for j in report["jobs"]])) if job_seconds else None,
        "rejected": sum(not j["promoted"] for j in report["jobs"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.score_candidates:
        wrong = [j for j in report["jobs"] if j["gate"].get("serving_dice") is not None and (
            j["promoted"] != (j["candidate_holdout_dice"] >= previous_holdout(report, j) - settings.promotion_tolerance))]
        report["summary"]["gate_disagrees_with_holdout"] = len(wrong)
    if args.offline:
        log(f"offline model: {total_steps} steps on {len(learned)} final labels")
        offline = offline_baseline(final_labels, registry, settings, total_steps, num_classes)
        report["summary"]["offline_holdout_dice"] = case_dice(offline, holdout, num_classes, size)
    write_json_atomic(args.out, report)
    log(f"summary: {json.dumps(report['summary'])}")
    return 0


def case_dice_of_labels(labels: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    from learner.metrics import dice_per_class

    return float(np.mean(list(dice_per_class(labels.astype(np.int64), truth.astype(np.int64), num_classes).values())))


def previous_holdout(report: dict, job: dict) -> float:
    """Holdout Dice of the version the gate compared ``job``'s candidate with."""
    serving = job["gate"]["serving"]
    for other in report["jobs"]:
        if other["version"] == serving and "candidate_holdout_dice" in other:
            return other["candidate_holdout_dice"]
    return report["holdout_dice_v0"]


if __name__ == "__main__":
    raise SystemExit(main())
