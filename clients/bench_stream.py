"""``scribbleflow bench stream``: an image stream annotated through the real REST API.

The benchmark is a client like any annotation tool. It starts an embedded server
(``scribbleflow serve`` as a subprocess on 127.0.0.1, a free port, a temporary data
directory) unless ``--url`` names one; creates a project whose labels follow the data's
class count; imports ``--checkpoint`` as the serving version (warm start); uploads the
stream as NIfTI; then, image by image in stream order, lets
``clients.annotator.SimulatedAnnotator`` annotate (slice policy, round limit, target Dice),
accepts, and by default waits for the image's accept job (with one annotator also for the
consolidation job it starts) before the next image (so the learning effect is measured
alike on fast and slow machines; ``--no-wait`` goes on at a user's pace).
``--annotators K`` runs K annotators, each with its own token and client, on different
images at once; ``--think-seconds S`` makes each pause about S seconds before every round,
as a person looks and draws (without it they submit as fast as the server answers).

Per round it records the Dice of the returned segmentation and of the registration proxy
alone, the effort, whether the server's suggestion landed on a slice with error (and a
random undrawn slice's chance of doing so), the client's round latency and whether a
training job ran meanwhile, and the model version. After the stream: the holdout Dice of
every model version and the gate's verdicts against it, an offline model trained on the
same accepted labels with the same number of optimiser steps, and forgetting. The
measures themselves are pure functions in ``clients/stream_metrics.py``; plots are
``clients/bench_plots.py``. Every loop is bounded in rounds, images, and seconds.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import torch
from tqdm import tqdm

from clients import stream_metrics as sm
from clients.annotator import SimulatedAnnotator
from clients.client import ApiError, ScribbleflowClient
from clients.server_process import ServerProcess, stop_children_on_sigterm
from learner.bench.offline import write_report_json
from learner.checkpoints import load_checkpoint
from learner.data import Case, case_paths, load_case
from learner.device import cpu_model_name, resolve_precision
from learner.inference import predict_volume
from learner.metrics import dice_per_class
from learner.registry import TRAINED_SOURCES
from learner.train import TrainSettings
from learner.train import train as train_model
from registration.io.volume import Volume, read_volume, write_volume_atomic
from server import schemas

SERVER_STARTUP_SECONDS = 180
POLL_SECONDS = 1.0  # job polls: each is a (short) write transaction on SQLite
#: The longest mean pause before a round (--think-seconds): 1.5 x it stays well inside a
#: session's lease (15 minutes by default) and the client's timeout.
MAX_THINK_SECONDS = 120.0


# --- the server -------------------------------------------------------------------------------


class EmbeddedServer(ServerProcess):
    """``scribbleflow serve`` on a free loopback port over a temporary data directory.

    ``SCRIBBLEFLOW_*`` variables of the caller's environment pass through (e.g. a test's
    ``SCRIBBLEFLOW_ONLINE_STEPS``); the data directory and host are the benchmark's."""

    def __init__(self, data_dir: Path, log_path: Path):
        env = dict(os.environ)
        env.update(SCRIBBLEFLOW_DATA_DIR=str(data_dir))
        env.setdefault("SCRIBBLEFLOW_LOG_LEVEL", "warning")
        env.pop("SCRIBBLEFLOW_DATABASE_URL", None)  # SQLite in the temporary directory
        super().__init__(env, log_path, startup_seconds=SERVER_STARTUP_SECONDS)
        self.data_dir = data_dir

    def admin_token(self) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "token", "create", "--role", "admin", "--owner", "bench"],
            env=self.env, capture_output=True, encoding="utf-8", errors="replace", timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"token create failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().start()


# --- a client that times rounds -----------------------------------------------------------


@dataclass
class RoundTiming:
    started: float  # Unix seconds
    seconds: float


class TimedClient(ScribbleflowClient):
    """A client that records how long each round request took, by round id."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.round_timings: dict[int, RoundTiming] = {}

    def _timed(self, call):
        started, clock = time.time(), time.perf_counter()
        result = call()
        self.round_timings[result.id] = RoundTiming(started, time.perf_counter() - clock)
        return result

    def add_round(self, session_id, scribbles=(), clicks=()):
        return self._timed(lambda: super(TimedClient, self).add_round(session_id, scribbles, clicks))

    def submit_labelmap(self, session_id, path, progress=None):
        return self._timed(lambda: super(TimedClient, self).submit_labelmap(session_id, path, progress))


# --- options --------------------------------------------------------------------------------


@dataclass
class StreamOptions:
    data: str
    holdout: str
    out: str
    plots: str | None = None
    limit: int | None = None
    holdout_limit: int | None = None
    policy: str = "residual"
    mode: str = "strokes"
    max_rounds: int = 10
    target_dice: float = 0.9
    annotators: int = 1
    checkpoint: str | None = None
    url: str | None = None
    token: str | None = None
    wait: bool = True
    think_seconds: float = 0.0
    job_timeout: float = 900.0
    time_limit_minutes: float = 600.0
    offline: bool = True
    offline_max_minutes: float | None = None
    seed: int = 0
    progress: bool = True
    keep_server_dir: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StreamOptions:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in vars(args).items() if k in names})


@dataclass
class StreamImage:
    name: str
    volume: Volume  # the image with its file's geometry (1 mm spacing for HDF5, which keeps none)
    truth: np.ndarray  # int64 (z, y, x)
    uploaded: schemas.ImageOut | None = None

    @property
    def image(self) -> np.ndarray:
        return self.volume.array


@dataclass
class Shared:
    """What the annotator threads share (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    volumes: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    timings: dict[int, RoundTiming] = field(default_factory=dict)


# --- helpers ----------------------------------------------------------------------------------


def mean_dice(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the classes 1..C-1 (``learner.metrics.dice_per_class`` conventions)."""
    scores = dice_per_class(np.asarray(prediction).astype(np.int64), np.asarray(truth).astype(np.int64), num_classes)
    return float(np.mean(list(scores.values())))


def _utc_seconds(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # the database keeps UTC without a zone
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _download_array(client: ScribbleflowClient, kind: str, key: int, name: str, folder: Path) -> np.ndarray:
    target = folder / f"{kind}-{key}-{name}.nii.gz"
    if kind == "round":
        client.download_round_file(key, name, target)
    else:
        client.download_session_file(key, name, target)
    array = read_volume(target).array
    target.unlink(missing_ok=True)
    return array


def _round_id(item) -> int:
    """The round id of one of the annotator's per-round records."""
    round_out = getattr(item, "round", None)
    if isinstance(round_out, schemas.RoundOut):
        return round_out.id
    return int(item.round_id)


def load_stream(directory: str, limit: int | None) -> list[StreamImage]:
    """The labelled volumes of a directory (either layout ``learner.data`` reads), in order."""
    images = []
    for image_path, label_path in case_paths(directory)[: limit or None]:
        case = load_case(image_path, label_path)
        if case.label is None:
            raise ValueError(f"{image_path}: the stream needs ground-truth labels")
        case.image.array = case.image.array.astype(np.float32)
        images.append(StreamImage(case.name, case.image, case.label.astype(np.int64)))
    return images


def upload_stream(client: ScribbleflowClient, project_id: int, stream: list[StreamImage], folder: Path) -> None:
    """Each volume as NIfTI (the file's geometry when it had one, else 1 mm) in stream order."""
    for item in stream:
        path = write_volume_atomic(item.volume, folder / f"{item.name}.nii.gz")
        item.uploaded = client.upload_image(project_id, path, name=item.name)
        path.unlink(missing_ok=True)


# --- one image ------------------------------------------------------------------------------


def annotate_image(
    client: TimedClient, item: StreamImage, num_classes: int, options: StreamOptions, folder: Path, seed: int
) -> dict:
    """Annotate, accept and (by default) wait for the accept job; the image's record."""
    image = item.uploaded
    annotator = SimulatedAnnotator(client, num_classes, policy=options.policy, mode=options.mode, seed=seed,
                                   think_seconds=options.think_seconds)
    started = time.time()
    record = annotator.annotate(image, item.truth, options.max_rounds, options.target_dice, accept=False)
    session_id = int(record.session_id)
    session = client.get_session(session_id)
    accept_started = time.time()
    accepted = client.accept(session_id)
    accept_seconds = time.time() - accept_started

    # Server-side rounds (effort as the server counted it, suggestion, model version).
    rounds_out = {r.id: r for r in client.image_rounds(image.id)}
    opening = _download_array(client, "session", session_id, "prediction", folder)
    alternative = (_download_array(client, "session", session_id, "alternative", folder)
                   if "alternative" in session.links else None)
    suggestion_before = session.suggestion
    segmentation_before = opening
    drawn: set[tuple[int, int]] = set()
    rounds = []
    for number, item_round in enumerate(record.rounds, start=1):
        round_id = _round_id(item_round)
        out = rounds_out[round_id]
        axis, index = int(item_round.axis), int(item_round.slice)
        segmentation = _download_array(client, "round", round_id, "segmentation", folder)
        proxy = _download_array(client, "round", round_id, "proxy", folder)
        entry = {
            "round_id": round_id,
            "number": number,
            "axis": axis,
            "slice": index,
            "effort": out.effort.model_dump(),
            "dice": mean_dice(segmentation, item.truth, num_classes),
            "proxy_dice": mean_dice(proxy, item.truth, num_classes),
            "model_version": out.model_version,
            "prediction_source": out.prediction_source,
            "compute_seconds": out.compute_seconds,
            "suggestion_followed": None,
            "suggestion": None,
        }
        if suggestion_before is not None:
            s_axis, s_slice = int(suggestion_before.axis), int(suggestion_before.slice)
            errors = sm.errors_per_slice(segmentation_before, item.truth, s_axis)
            slice_pixels = int(np.prod([n for a, n in enumerate(item.truth.shape) if a != s_axis]))
            outcome = sm.suggestion_outcome(errors, s_slice, {i for a, i in drawn if a == s_axis}, slice_pixels)
            entry["suggestion"] = {"axis": s_axis, "slice": s_slice, **outcome}
            entry["suggestion_followed"] = (s_axis, s_slice) == (axis, index)
        timing = client.round_timings.get(round_id)
        if timing is not None:
            entry["latency_s"] = timing.seconds
            entry["started_unix"] = timing.started
        rounds.append(entry)
        drawn.add((axis, index))
        suggestion_before = out.suggestion
        segmentation_before = segmentation

    full = sm.boundary_pixels_per_slice(item.truth, 0)
    touched = sm.touched_boundary_pixels(item.truth, drawn)
    stroke_voxels = sum(r["effort"]["voxels"] for r in rounds)
    final_dice = rounds[-1]["dice"] if rounds else mean_dice(opening, item.truth, num_classes)
    volume = {
        "name": item.name,
        "image_id": image.id,
        "stream_position": image.stream_position,
        "is_validation": image.is_validation,
        "session_id": session_id,
        "opening_dice": mean_dice(opening, item.truth, num_classes),
        "opening_model_version": session.model_version,
        "opening_source": session.prediction_source,
        # when the server computed both the model's and the atlas's: the other one against the
        # truth, and what the server scored (against the accepted label)
        "alternative_dice": None if alternative is None else mean_dice(alternative, item.truth, num_classes),
        "opening_scores": accepted.session.opening_scores,
        "rounds": rounds,
        "final_dice": final_dice,
        "reached_target": final_dice >= options.target_dice,
        "touched_planes": sorted([list(p) for p in drawn]),
        "effort": {
            "stroke_voxels": stroke_voxels,
            "strokes": sum(r["effort"]["strokes"] for r in rounds),
            "clicks": sum(r["effort"]["clicks"] for r in rounds),
            "slices_touched": len(drawn),
            "touched_boundary_pixels": touched,
            "full_boundary_pixels": int(full.sum()),
            "effort_reduction_pct": sm.effort_reduction_pct(touched, int(full.sum())),
            "stroke_voxel_ratio": sm.stroke_voxel_ratio(stroke_voxels, int(full.sum())),
        },
        "annotation_seconds": accept_started - started,
        "accept_seconds": accept_seconds,
        "accepted_unix": accept_started,
        "accept_job_id": accepted.job_id,
        "accept_job": None,
    }
    if options.wait and accepted.job_id is not None:
        volume["accept_job"] = wait_for_job(client, accepted.job_id, options.job_timeout).model_dump(mode="json")
        if options.annotators == 1:  # and for the consolidation job it started: learning from this image
            client.wait_for_jobs(image.project_id, options.job_timeout, poll=POLL_SECONDS)
    return volume


def wait_for_job(client: ScribbleflowClient, job_id: int, timeout: float) -> schemas.JobOut:
    """Poll a job until it finished (TimeoutError after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get_job(job_id)
        if job.state not in ("queued", "running"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def wait_for_project_jobs(client: ScribbleflowClient, project_id: int, timeout: float) -> list[schemas.JobOut]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = client.list_jobs(project_id)
        if all(j.state not in ("queued", "running") for j in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(POLL_SECONDS * 4)


# --- the annotators -----------------------------------------------------------------------------


def run_annotators(
    url: str, tokens: list[str], stream: list[StreamImage], num_classes: int, options: StreamOptions,
    project_id: int, folder: Path,
) -> Shared:
    """K annotator threads, each with its own client, taking the next image of the stream."""
    shared = Shared()
    pending: queue.Queue[StreamImage] = queue.Queue()
    for item in stream:
        pending.put(item)
    deadline = time.monotonic() + options.time_limit_minutes * 60.0
    bar = tqdm(total=len(stream), desc="stream", unit="image", disable=not options.progress)
    stopping = threading.Event()  # the main thread is leaving (SIGTERM, Ctrl-C): no new image

    def work(index: int, token: str) -> None:
        with TimedClient(url, token, timeout=900.0) as client:
            while time.monotonic() < deadline and not stopping.is_set():
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
                if len(tokens) == 1:  # one annotator walks the stream through the API's order
                    following = client.next_image(project_id).image
                    if following is None or following.id != item.uploaded.id:
                        with shared.lock:
                            shared.errors.append({"image": item.name, "error": "stream order differs: next is "
                                                  f"{following.id if following else None}"})
                try:
                    volume = annotate_image(client, item, num_classes, options, folder / f"a{index}",
                                            options.seed + 1000 * item.uploaded.stream_position)
                    volume["annotator"] = index
                    with shared.lock:
                        shared.volumes.append(volume)
                except (ApiError, httpx.HTTPError, TimeoutError, ValueError, KeyError) as exc:
                    with shared.lock:
                        shared.errors.append({"image": item.name, "annotator": index,
                                              "error": f"{type(exc).__name__}: {exc}"})
                bar.update(1)
            with shared.lock:
                shared.timings.update(client.round_timings)

    for index in range(len(tokens)):
        (folder / f"a{index}").mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=work, args=(i, t), name=f"annotator-{i}") for i, t in enumerate(tokens)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stopping.set()
    bar.close()
    skipped = pending.qsize()
    if skipped:
        shared.errors.append({"error": f"time limit reached: {skipped} image(s) not annotated"})
    shared.volumes.sort(key=lambda v: v["stream_position"])
    return shared


# --- models after the stream ---------------------------------------------------------------------


def holdout_dice(model, cases: list[StreamImage], size: int, num_classes: int) -> dict[str, float]:
    """Mean Dice (classes 1..C-1, raw arg-max as the promotion gate scores) per holdout case."""
    return {
        c.name: mean_dice(predict_volume(model, c.image, size=size).argmax(axis=0), c.truth, num_classes)
        for c in cases
    }


class Checkpoints:
    """Model versions downloaded through the API (once each), loaded on the CPU."""

    def __init__(self, client: ScribbleflowClient, project_id: int, folder: Path):
        self.client, self.project_id, self.folder = client, project_id, folder
        folder.mkdir(parents=True, exist_ok=True)

    def load(self, version: int):
        path = self.folder / f"v{version:06d}.pt"
        if not path.exists():
            self.client.download_checkpoint(self.project_id, version, path)
        model, _config, _metadata = load_checkpoint(path, device="cpu")
        return model


def evaluate_versions(checkpoints: Checkpoints, versions: list[schemas.ModelVersionOut], holdout: list[StreamImage],
                      size: int, num_classes: int, progress: bool) -> dict[int, dict]:
    """Holdout Dice of every model version."""
    scores: dict[int, dict] = {}
    for record in tqdm(versions, desc="holdout per version", unit="version", disable=not progress):
        per_case = holdout_dice(checkpoints.load(record.version), holdout, size, num_classes)
        scores[record.version] = {"mean_dice": float(np.mean(list(per_case.values()))), "per_case": per_case}
    return scores


def lineage_steps(versions: list[schemas.ModelVersionOut], version: int | None) -> int:
    """Optimiser steps along the parents of ``version`` (what that model was trained with)."""
    by_version = {v.version: v for v in versions}
    steps = 0
    while version is not None and version in by_version:
        record = by_version[version]
        steps += int(record.metrics.get("steps") or 0)
        version = record.parent
    return steps


def online_precision(learning: dict) -> str:
    """The precision the project's online jobs train at on this machine's CPU (``learner.device``)."""
    return resolve_precision(torch.device("cpu"), str(learning.get("online", {}).get("precision", "auto")))


def train_offline(train: list[tuple[StreamImage, np.ndarray]], holdout: list[StreamImage], steps: int,
                  learning: dict, num_classes: int, seed: int, max_minutes: float | None = None):
    """A fresh network trained with the ``full`` method on the accepted labels for ``steps`` steps
    (the online jobs' precision and batch size; validated once, at the end), or fewer when
    ``max_minutes`` of training time run out first."""
    online = learning.get("online", {})
    settings = TrainSettings(
        method="full", minutes=max_minutes, max_iterations=steps, size=int(online.get("size", 128)),
        batch_size=int(online.get("batch_size", 4)), channels=tuple(learning.get("channels") or ()) or None,
        precision=online_precision(learning), val_every=steps, seed=seed, num_classes=num_classes, progress_bar=False,
    )
    cases = [Case(item.name, item.volume, label=label.astype(np.int64)) for item, label in train]
    validation = [Case(c.name, c.volume, label=c.truth) for c in holdout[:1]]
    result, model = train_model(settings, cases, validation)
    return result, model


# --- the whole benchmark -----------------------------------------------------------------------


def _latencies(volumes: list[dict], jobs: list[schemas.JobOut]) -> None:
    """Mark each round with whether a training job ran while it was computed (its own job,
    submitted at the end of the request, does not count)."""
    intervals = [(j.round_id, _utc_seconds(j.started_at), _utc_seconds(j.finished_at)) for j in jobs if j.started_at]
    for volume in volumes:
        for entry in volume["rounds"]:
            if "started_unix" not in entry:
                continue
            start, end = entry["started_unix"], entry["started_unix"] + entry["latency_s"]
            entry["job_running"] = any(
                s < end and (f is None or f > start) for round_id, s, f in intervals if round_id != entry["round_id"]
            )


def summarize(volumes: list[dict], extra: dict) -> dict:
    """The summary dict: ``stream_metrics.SUMMARY_KEYS`` first, then the extra measures."""
    rounds = [r for v in volumes for r in v["rounds"]]
    latencies = [r["latency_s"] for r in rounds if "latency_s" in r]
    with_job = [r["latency_s"] for r in rounds if r.get("job_running") is True]
    without_job = [r["latency_s"] for r in rounds if r.get("job_running") is False]
    suggestions = [r["suggestion"] for r in rounds if r["suggestion"] is not None]
    effort = [v["effort"]["touched_boundary_pixels"] for v in volumes]
    first, last = sm.thirds(effort)
    to_model = [v["annotation_to_model_s"] for v in volumes if v.get("annotation_to_model_s") is not None]
    summary = {
        "volumes": len(volumes),
        "reached_target": sum(bool(v["reached_target"]) for v in volumes),
        "mean_final_dice": sm.mean(v["final_dice"] for v in volumes),
        "mean_effort_reduction_pct": sm.mean(v["effort"]["effort_reduction_pct"] for v in volumes),
        "effort_first_third": first,
        "effort_last_third": last,
        "fused_minus_proxy_dice": sm.mean(r["dice"] - r["proxy_dice"] for r in rounds),
        "suggestion_hit_rate": sm.mean(float(s["suggested_hit"]) for s in suggestions),
        "random_slice_hit_rate": sm.mean(s["random_hit_rate"] for s in suggestions),
        "round_latency_p50_s": sm.percentile(latencies, 50),
        "round_latency_p95_s": sm.percentile(latencies, 95),
        "annotation_to_model_p95_s": sm.percentile(to_model, 95),
        "online_holdout_dice": extra.pop("online_holdout_dice", None),
        "offline_holdout_dice": extra.pop("offline_holdout_dice", None),
        "forgetting": extra.pop("forgetting", None),
    }
    first_stroke, last_stroke = sm.thirds([v["effort"]["stroke_voxels"] for v in volumes])
    lowering = [sm.rounds_lowering(v["opening_dice"], [r["dice"] for r in v["rounds"]]) for v in volumes]
    paired = [v for v in volumes if v.get("alternative_dice") is not None]
    summary.update({
        "reached_target_fraction": summary["reached_target"] / len(volumes) if volumes else None,
        "rounds": len(rounds),
        "mean_rounds_per_volume": len(rounds) / len(volumes) if volumes else None,
        # rounds that left the answer worse than the one the user corrected (stream_metrics.lowered)
        "first_rounds_below_opening": sum(first for first, _ in lowering),
        "rounds_lowering_dice": sum(later for _, later in lowering),
        "mean_stroke_voxel_ratio": sm.mean(v["effort"]["stroke_voxel_ratio"] for v in volumes),
        "stroke_voxels_first_third": first_stroke,
        "stroke_voxels_last_third": last_stroke,
        "suggestion_error_voxels_mean": sm.mean(s["suggested_error_voxels"] for s in suggestions),
        "random_slice_error_voxels_mean": sm.mean(s["random_error_voxels"] for s in suggestions),
        "suggestions_on_drawn_slices": sum(bool(s["suggested_was_drawn"]) for s in suggestions),
        "round_latency_with_job_p50_s": sm.percentile(with_job, 50),
        "round_latency_with_job_p95_s": sm.percentile(with_job, 95),
        "round_latency_without_job_p50_s": sm.percentile(without_job, 50),
        "round_latency_without_job_p95_s": sm.percentile(without_job, 95),
        "rounds_with_job": len(with_job),
        "rounds_without_job": len(without_job),
        "annotation_to_model_p50_s": sm.percentile(to_model, 50),
        "mean_opening_dice": sm.mean(v["opening_dice"] for v in volumes),
        "atlas_openings": sum(v.get("opening_source") == "atlas" for v in volumes),
        # of the volumes with both openings: how often the one shown was the better (against the truth)
        "openings_with_alternative": len(paired),
        "better_opening_shown": sum(v["opening_dice"] >= v["alternative_dice"] for v in paired),
        "mean_better_opening_dice": sm.mean(max(v["opening_dice"], v["alternative_dice"]) for v in paired),
        **extra,
    })
    return summary


def run_stream_benchmark(options: StreamOptions) -> dict:
    if options.max_rounds < 0:
        raise ValueError(f"--max-rounds must be >= 0, got {options.max_rounds}")
    if options.annotators < 1:
        raise ValueError(f"--annotators must be >= 1, got {options.annotators}")
    if not 0.0 <= options.think_seconds <= MAX_THINK_SECONDS:
        raise ValueError(f"--think-seconds must be in 0..{MAX_THINK_SECONDS:g}, got {options.think_seconds}")
    wall_started = time.perf_counter()
    stream = load_stream(options.data, options.limit)
    holdout = load_stream(options.holdout, options.holdout_limit)
    num_classes = max(int(max(s.truth.max() for s in stream + holdout)) + 1, 2)
    work_dir = Path(tempfile.mkdtemp(prefix="scribbleflow-bench-stream-"))
    server = None
    with stop_children_on_sigterm():
        try:
            if options.url:
                url, token = options.url.rstrip("/"), options.token or os.environ.get("SCRIBBLEFLOW_TOKEN")
                if not token:
                    raise ValueError("--url needs an admin token (--token or SCRIBBLEFLOW_TOKEN)")
            else:
                server = EmbeddedServer(work_dir / "server-data", work_dir / "server.log")
                token = server.admin_token()
                server.start()
                url = server.url
            startup_seconds = time.perf_counter() - wall_started
            report = _run(url, token, stream, holdout, num_classes, options, work_dir)
            report["summary"]["phase_seconds"]["load_and_start"] = startup_seconds
        finally:
            if server is not None:
                server.stop()
            if options.keep_server_dir:
                print(f"bench stream: server data kept in {work_dir}", file=sys.stderr)
            else:
                shutil.rmtree(work_dir, ignore_errors=True)
    report["wall_seconds"] = time.perf_counter() - wall_started
    write_report_json(report, options.out)
    if options.plots:
        from clients.bench_plots import write_plots  # matplotlib only when plots are asked for

        report["plots"] = write_plots(report, options.plots)
        write_report_json(report, options.out)
    return report


ROUND_PHASE_METRICS = ("scribbleflow_round_phase_seconds", "scribbleflow_round_compute_phase_seconds")


def _round_phases(admin: ScribbleflowClient) -> dict[str, dict[str, dict[str, float]]]:
    """The server's own account of its rounds' time so far, by metric (``ROUND_PHASE_METRICS``):
    the phases of a round request, and the parts of its computation."""
    text = admin.metrics()
    return {metric: sm.histogram_by_label(text, metric, "phase") for metric in ROUND_PHASE_METRICS}


def _run(url: str, token: str, stream: list[StreamImage],
         holdout: list[StreamImage], num_classes: int, options: StreamOptions, work_dir: Path) -> dict:
    load_start = os.getloadavg()[0]
    phases: dict[str, float] = {}
    clock = time.perf_counter()
    with ScribbleflowClient(url, token, timeout=900.0) as admin:
        labels = [f"label{c}" for c in range(1, num_classes)]
        project = admin.create_project(f"bench-stream-{int(time.time())}", labels)
        if options.checkpoint:
            admin.import_checkpoint(project.id, options.checkpoint)
            project = admin.get_project(project.id)
        upload_dir = work_dir / "upload"
        upload_dir.mkdir()
        upload_stream(admin, project.id, stream, upload_dir)
        tokens = [admin.create_token("annotator", f"annotator-{k}").token for k in range(options.annotators)]

        phases["project_and_upload"] = time.perf_counter() - clock
        phases_before = _round_phases(admin)  # a server given by --url may have seen other rounds
        clock = time.perf_counter()
        shared = run_annotators(url, tokens, stream, num_classes, options, project.id, work_dir / "downloads")
        phases["stream"] = time.perf_counter() - clock
        phases_after = _round_phases(admin)
        phase_change = {metric: sm.histogram_change(phases_before[metric], phases_after[metric])
                        for metric in ROUND_PHASE_METRICS}
        clock = time.perf_counter()
        jobs = wait_for_project_jobs(admin, project.id, options.job_timeout)
        phases["remaining_jobs"] = time.perf_counter() - clock
        jobs_by_id = {j.id: j for j in jobs}
        models = admin.list_models(project.id)
        versions = [{"version": v.version, "created_at": v.created_at, "promoted": bool(v.promoted),
                     # Of a job's fine-tuned version and its average, only the one the gate judged.
                     "gated": v.source in TRAINED_SOURCES and v.metrics.get("judged", True)}
                    for v in models.versions]
        for volume in shared.volumes:
            job = jobs_by_id.get(volume["accept_job_id"]) if volume["accept_job_id"] is not None else None
            if job is not None:
                volume["accept_job"] = job.model_dump(mode="json")
                finished = _utc_seconds(job.finished_at) if job.state == "succeeded" else None
                volume["annotation_to_model_s"] = None if finished is None else finished - volume["accepted_unix"]
                volume["version_after"] = sm.serving_at(versions, job.finished_at) if finished else None
        _latencies(shared.volumes, jobs)

        learning = project.learning.model_dump(mode="json")
        size = int(learning.get("online", {}).get("size", 128))
        extra: dict = {
            "errors": len(shared.errors),
            "error_messages": shared.errors[:50],
            "jobs": {state: sum(j.state == state for j in jobs) for state in sorted({j.state for j in jobs})},
            "jobs_by_trigger": {t: sum(j.trigger == t for j in jobs) for t in sorted({j.trigger for j in jobs})},
            "model_versions": len(models.versions),
            "serving_version": models.serving_version,
            "phase_seconds": phases,
            # The server's account of the rounds' time, and of its phase "compute" part by part.
            "server_round_phases": phase_change["scribbleflow_round_phase_seconds"],
            "server_round_compute_phases": phase_change["scribbleflow_round_compute_phase_seconds"],
        }
        curve = {"versions": [v.model_dump(mode="json") for v in models.versions]}
        clock = time.perf_counter()
        checkpoints = Checkpoints(admin, project.id, work_dir / "checkpoints")
        version_scores = evaluate_versions(checkpoints, models.versions, holdout, size, num_classes, options.progress)
        holdout_by_version = {v: s["mean_dice"] for v, s in version_scores.items()}
        tolerance = float(learning.get("online", {}).get("promotion_tolerance", 0.02))
        verdicts = sm.gate_verdicts(versions, holdout_by_version, tolerance)
        extra["gate_errors"] = sum(v["gate_error"] for v in verdicts)
        extra["gate_missed_improvements"] = sum(v["missed_improvement"] for v in verdicts)
        extra["online_holdout_dice"] = holdout_by_version.get(models.serving_version)
        extra["online_steps_total"] = sum(int(v.metrics.get("steps") or 0) for v in models.versions)
        extra["online_steps_serving_lineage"] = lineage_steps(models.versions, models.serving_version)

        # Forgetting: the first fifth of the stream, right after learning it and at the end.
        forgetting_cases = _forgetting(checkpoints, shared.volumes, stream, models.serving_version, size,
                                       num_classes)
        extra["forgetting"] = sm.forgetting(forgetting_cases["after_learned"], forgetting_cases["at_end"])
        extra["forgetting_cases"] = forgetting_cases
        phases["holdout_and_forgetting"] = time.perf_counter() - clock
        clock = time.perf_counter()

        # The offline model on the same accepted labels (validation images excluded, like online).
        if options.offline and extra["online_steps_serving_lineage"] > 0:
            train_set = []
            by_name = {s.name: s for s in stream}
            for volume in shared.volumes:
                if volume["is_validation"]:
                    continue
                target = work_dir / f"label-{volume['image_id']}.nii.gz"
                admin.download_label(volume["image_id"], target)
                train_set.append((by_name[volume["name"]], read_volume(target).array))
            if train_set:
                result, offline_model = train_offline(train_set, holdout, extra["online_steps_serving_lineage"],
                                                      learning, num_classes, options.seed,
                                                      options.offline_max_minutes)
                offline_scores = holdout_dice(offline_model, holdout, size, num_classes)
                extra["offline_holdout_dice"] = float(np.mean(list(offline_scores.values())))
                extra["offline"] = {"iterations": result.iterations, "train_seconds": result.train_seconds,
                                    "images": len(train_set), "per_case": offline_scores}
        phases["offline"] = time.perf_counter() - clock

    extra.update({
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "precision": {"online": online_precision(learning), "offline": online_precision(learning),
                      "device_auto": resolve_precision(torch.device("cpu"))},
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
    })
    summary = summarize(shared.volumes, extra)
    return {
        "benchmark": "stream",
        "options": {k: v for k, v in vars(options).items() if k != "token"},
        "num_classes": num_classes,
        "project_id": project.id,
        "learning": learning,
        "summary": summary,
        "volumes": shared.volumes,
        "holdout": {"cases": [c.name for c in holdout], "versions": {str(k): v for k, v in version_scores.items()}},
        "gate": verdicts,
        "learning_curve": curve,
    }


def _forgetting(checkpoints: Checkpoints, volumes: list[dict], stream: list[StreamImage],
                final_version: int | None, size: int, num_classes: int) -> dict:
    by_name = {s.name: s for s in stream}
    learned = [v for v in volumes if not v["is_validation"] and v.get("version_after") is not None]
    early = learned[: sm.first_fifth(len(learned))]
    after, at_end = {}, {}
    for volume in early:
        item = by_name[volume["name"]]
        for version, target in ((volume["version_after"], after), (final_version, at_end)):
            target[item.name] = holdout_dice(checkpoints.load(version), [item], size, num_classes)[item.name]
    return {"after_learned": after, "at_end": at_end,
            "versions_after": {v["name"]: v["version_after"] for v in early}, "final_version": final_version}
