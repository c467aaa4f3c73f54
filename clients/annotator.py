"""A simulated annotator that corrects the server's answer, slice by slice, from a ground truth.

It drives the real REST API through ``clients.client.ScribbleflowClient`` like a radiology
tool would: open a session, look at the current segmentation, choose a slice (``choose_slice``:
the server's suggestion, a random slice, or the oracle's worst slice), draw on it what a person
would draw to fix it (``corrective_scribble``: a thin stroke along the skeleton of each class's
largest missed and largest wrongly claimed region, or a click at its centre), submit that as
a round (strokes or clicks of voxel indices (i, j, k), or a scribble labelmap), and stop when
the mean foreground Dice reaches a target or after a number of rounds; then accept. Arrays
are (z, y, x).

The pure helpers (``choose_slice``, ``corrective_scribble``, ``strokes_from_scribble``,
``clicks_from_scribble``) take arrays and return arrays; only ``SimulatedAnnotator`` talks HTTP.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from clients.client import ScribbleflowClient
from learner.metrics import dice_per_class
from registration.io.volume import UNLABELLED, Volume, read_volume, write_volume_atomic
from server import schemas

POLICIES = ("residual", "random", "oracle")
#: strokes / clicks: sent as interactions; labelmap: strokes sent as a scribble labelmap file.
MODES = ("strokes", "clicks", "labelmap")
#: Error components smaller than this (pixels) are left alone: a person does not fix a
#: one-pixel border wobble.
MIN_ERROR_PIXELS = 8
#: Longest stroke a person draws in one go (pixels); a longer skeleton keeps the part
#: nearest the structures.
MAX_STROKE_PIXELS = 150
#: The answer before the first round, where nothing is labelled yet (every class, the
#: background included, is still to be drawn).
NOTHING = -1


# --- pure helpers ---------------------------------------------------------------------------


def answer_before_first_round(opening_zyx: np.ndarray) -> np.ndarray:
    """What round 1 corrects: the opening labels when they show any structure (the server keeps
    them where the user draws nothing), else ``NOTHING`` everywhere (an empty opening claims nothing)."""
    opening = np.asarray(opening_zyx).astype(np.int64)
    return opening if opening.any() else np.full_like(opening, NOTHING)


def usable_suggestion(suggestion: schemas.Suggestion | None, drawn: set[tuple[int, int]]) -> bool:
    """True when the server suggested a plane that has not been drawn yet."""
    return suggestion is not None and (int(suggestion.axis), int(suggestion.slice)) not in drawn


def annotation_axis(drawn: set[tuple[int, int]], default: int = 0) -> int:
    """The axis most drawn planes lie on (ties: the lower), ``default`` when none."""
    counts = np.bincount([a for a, _ in drawn], minlength=3)
    return int(np.argmax(counts)) if counts.sum() else default


def choose_slice(
    policy: str,
    truth_zyx: np.ndarray,
    segmentation_zyx: np.ndarray,
    suggestion: schemas.Suggestion | None,
    drawn: set[tuple[int, int]],
    rng: np.random.Generator,
    axis: int | None = None,
) -> tuple[int, int]:
    """(axis, index) of the next slice to draw on, never one in ``drawn``.

    ``residual``: the server's suggestion; when it is missing or already drawn, the
    ``random`` choice (callers count that with ``usable_suggestion``). ``random``: a random
    undrawn slice along ``axis`` (default: the axis most drawn slices lie on, z at first)
    among those whose truth or segmentation holds foreground, or any undrawn one.
    ``oracle``: the undrawn slice along ``axis`` with the most voxels where the
    segmentation differs from the truth and one of them is foreground (ties: the lowest
    index; with a segmentation of ``NOTHING``, the slice with most foreground). When every slice of the
    axis is drawn, the other axes are tried; ValueError when every plane is drawn.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    truth = np.asarray(truth_zyx)
    segmentation = np.asarray(segmentation_zyx)
    if truth.shape != segmentation.shape or truth.ndim != 3:
        raise ValueError(f"truth {truth.shape} and segmentation {segmentation.shape} must be one (z, y, x) shape")
    if policy == "residual" and usable_suggestion(suggestion, drawn):
        return int(suggestion.axis), int(suggestion.slice)  # type: ignore[union-attr]
    first = annotation_axis(drawn) if axis is None else int(axis)
    for candidate_axis in [first] + [a for a in range(3) if a != first]:
        undrawn = [i for i in range(truth.shape[candidate_axis]) if (candidate_axis, i) not in drawn]
        if not undrawn:
            continue
        if policy == "oracle":
            wrong_foreground = (truth != segmentation) & ((truth > 0) | (segmentation > 0))
            wrong = np.moveaxis(wrong_foreground, candidate_axis, 0).sum(axis=(1, 2))
            return candidate_axis, max(undrawn, key=lambda i: (int(wrong[i]), -i))
        foreground = np.moveaxis((truth > 0) | (segmentation > 0), candidate_axis, 0).any(axis=(1, 2))
        showing = [i for i in undrawn if foreground[i]]
        return candidate_axis, int(rng.choice(showing or undrawn))
    raise ValueError("every plane of the volume has been drawn")


def next_correction(
    policy: str,
    truth_zyx: np.ndarray,
    segmentation_zyx: np.ndarray,
    suggestion: schemas.Suggestion | None,
    drawn: set[tuple[int, int]],
    rng: np.random.Generator,
    num_classes: int,
    mode: str = "strokes",
    axis: int | None = None,
) -> tuple[int, int, np.ndarray, bool] | None:
    """(axis, index, 2D drawing, fallback) of the annotator's next round; None when every
    plane left is right already (nothing to fix).

    The plane is ``choose_slice``'s; one whose ``corrective_scribble`` is empty (no error
    region worth a stroke) is skipped, as looked at, for the next choice, and a ``residual``
    annotator then picks at random (``fallback`` True, as when the suggestion is missing or
    already drawn).
    """
    truth = np.asarray(truth_zyx)
    segmentation = np.asarray(segmentation_zyx)
    looked = set(drawn)
    fallback = policy == "residual" and not usable_suggestion(suggestion, drawn)
    chooser = policy
    while True:
        try:
            plane_axis, index = choose_slice(chooser, truth, segmentation, suggestion, looked, rng, axis)
        except ValueError:  # every plane looked at
            return None
        drawing = corrective_scribble(
            np.take(truth, index, axis=plane_axis), np.take(segmentation, index, axis=plane_axis), num_classes, mode
        )
        if (drawing != UNLABELLED).any():
            return plane_axis, index, drawing, fallback
        looked.add((plane_axis, index))
        if chooser == "residual":  # the suggested plane is right: look elsewhere
            chooser, fallback = "random", True


def _innermost_point(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` farthest from its border (its centre, even when not convex)."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), region.shape))  # type: ignore[return-value]


def _stroke(region: np.ndarray, near: np.ndarray, max_pixels: int) -> np.ndarray:
    """A thin stroke inside ``region``: its skeleton, at most ``max_pixels`` of it, those
    nearest to ``near`` (the structures) when it is longer."""
    skeleton = skeletonize(region) & region
    if not skeleton.any():  # too thin to thin: its innermost pixel
        skeleton = np.zeros_like(region)
        skeleton[_innermost_point(region)] = True
    if skeleton.sum() <= max_pixels:
        return skeleton
    anchor = near if near.any() else np.zeros_like(region)
    if not anchor.any():
        anchor[_innermost_point(region)] = True
    distance = ndimage.distance_transform_edt(~anchor)
    rows, cols = np.nonzero(skeleton)
    keep = np.argsort(distance[rows, cols], kind="stable")[:max_pixels]
    out = np.zeros_like(region)
    out[rows[keep], cols[keep]] = True
    return out


def _background_band(foreground: np.ndarray) -> np.ndarray:
    """The background within a margin of ``foreground`` (0.3 of its equivalent radius, at least
    4 pixels): where a person draws the background around a structure."""
    margin = max(4.0, 0.3 * float(np.sqrt(foreground.sum() / np.pi)))
    return (ndimage.distance_transform_edt(~foreground) <= margin) & ~foreground


def _largest_component(region: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(region, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return region
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    return components == int(np.argmax(sizes)) + 1


def corrective_scribble(
    truth_2d: np.ndarray,
    segmentation_2d: np.ndarray,
    num_classes: int,
    mode: str = "strokes",
    *,
    min_pixels: int = MIN_ERROR_PIXELS,
    max_stroke_pixels: int = MAX_STROKE_PIXELS,
) -> np.ndarray:
    """uint8 (y, x): what a person draws on this slice to fix ``segmentation_2d``; UNLABELLED
    where nothing is drawn.

    For each class c, two errors (the issue's "missed region → that class; wrong region → its
    true label"): the pixels that should be c but are not (c missed, or another class where
    the truth says c, background included), and, for c > 0, the pixels the answer calls c
    that are something else. The largest connected component of each, when it has at least
    ``min_pixels`` pixels, gets a 1-pixel stroke along its skeleton (``mode``
    strokes/labelmap; at most ``max_stroke_pixels``, those nearest the true foreground) or
    one click at its innermost pixel (``clicks``); every drawn pixel carries its true label.
    For the background, errors next to the structures (``_background_band``) come first, so
    that on a slice with no answer yet (``segmentation_2d`` all ``NOTHING``) the background
    stroke circles the structures instead of running through the empty corners. A class
    that is already right gets nothing; with no answer yet, every class gets a stroke.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    truth = np.asarray(truth_2d)
    segmentation = np.asarray(segmentation_2d)
    if truth.shape != segmentation.shape or truth.ndim != 2:
        raise ValueError(f"truth {truth.shape} and segmentation {segmentation.shape} must be one 2D shape")
    out = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    foreground = (truth > 0) & (truth < num_classes)

    def draw(region: np.ndarray) -> None:
        # Every drawn pixel takes its true label: a missed region of c is drawn as c, a
        # region wrongly claimed by c as what it really is.
        if not region.any() or region.sum() < min_pixels:
            return
        if mode == "clicks":
            where = np.zeros_like(region)
            where[_innermost_point(region)] = True
        else:
            where = _stroke(region, foreground, max_stroke_pixels)
        out[where] = truth[where]

    for cls in range(num_classes):
        missed = (truth == cls) & (segmentation != cls)
        region = _largest_component(missed)
        if cls == 0 and foreground.any():
            near = _largest_component(missed & _background_band(foreground))
            if near.sum() >= min_pixels:
                region = near
        draw(region)
        if cls > 0:  # what the background wrongly claims is a missed region of a class above
            claimed = (segmentation == cls) & (truth != cls) & (truth >= 0) & (truth < num_classes)
            draw(_largest_component(claimed))
    return out


def structures_only(drawing: np.ndarray) -> np.ndarray:
    """A copy of ``drawing`` without its background strokes (what a person draws who marks the
    structures alone)."""
    out = np.array(drawing, copy=True)
    out[out == 0] = UNLABELLED
    return out


def strokes_from_scribble(scribble_zyx: np.ndarray, max_points: int = 5000) -> list[schemas.Stroke]:
    """Strokes (index space, radius 0) that paint exactly the scribble's voxels.

    Each label's voxels are chained greedily into polylines whose consecutive points are
    8-neighbours, so the line joining them covers only scribbled voxels.
    """
    strokes: list[schemas.Stroke] = []
    for label in np.unique(scribble_zyx[scribble_zyx != UNLABELLED]):
        remaining = {tuple(int(c) for c in p) for p in np.argwhere(scribble_zyx == label)}
        while remaining:
            current = min(remaining)
            remaining.discard(current)
            chain = [current]
            while len(chain) < max_points:
                z, y, x = chain[-1]
                neighbour = next(
                    ((z + dz, y + dy, x + dx) for dz in (0, -1, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                     if (z + dz, y + dy, x + dx) in remaining),
                    None,
                )
                if neighbour is None:
                    break
                remaining.discard(neighbour)
                chain.append(neighbour)
            points = [(float(x), float(y), float(z)) for z, y, x in chain]  # (i, j, k)
            strokes.append(schemas.Stroke(points=points, label=int(label), radius=0.0, space="index"))
    return strokes


def clicks_from_scribble(scribble_zyx: np.ndarray) -> list[schemas.Click]:
    """One positive click (index space) per labelled voxel of the scribble."""
    return [
        schemas.Click(point=(float(x), float(y), float(z)), label=int(scribble_zyx[z, y, x]), space="index")
        for z, y, x in np.argwhere(scribble_zyx != UNLABELLED)
    ]


def mean_foreground_dice(dice: dict[int, float]) -> float:
    return float(np.mean(list(dice.values()))) if dice else 0.0


# --- the annotator over HTTP ----------------------------------------------------------------


@dataclass
class RoundRecord:
    round: schemas.RoundOut
    axis: int
    slice: int
    effort: dict  # this round's own input: voxels, strokes, clicks, slices_touched
    dice: dict[int, float] | None = None  # per class, of the returned segmentation
    proxy_dice: dict[int, float] | None = None  # per class, of the registration proxy alone
    suggestion: schemas.Suggestion | None = None  # what the server suggested before this round
    fallback: bool = False  # policy "residual" and the suggestion was missing or drawn
    model_version: int | None = None
    model_weight: float | None = None
    seconds: float = 0.0  # client-side latency of the round request

    @property
    def mean_dice(self) -> float | None:
        return None if self.dice is None else mean_foreground_dice(self.dice)


@dataclass
class AnnotationRecord:
    image_id: int
    session_id: int
    rounds: list[RoundRecord] = field(default_factory=list)
    accepted: schemas.AcceptOut | None = None
    reached_target: bool = False
    fallbacks: int = 0  # rounds whose suggestion could not be used
    opening_dice: dict[int, float] | None = None  # per class, of the prediction at open

    def total_effort(self) -> dict[str, int]:
        keys = ("voxels", "strokes", "clicks", "slices_touched")
        return {k: int(sum(r.effort.get(k, 0) for r in self.rounds)) for k in keys}


def geometry_of(image: schemas.ImageOut) -> Volume:
    """An empty volume with the image's geometry (to write labelmaps the server accepts)."""
    return Volume(
        np.zeros(tuple(image.shape_zyx), dtype=np.uint8),
        tuple(image.spacing_xyz),
        tuple(image.origin_xyz),
        tuple(image.direction),
    )


class SimulatedAnnotator:
    """Annotates one image at a time from its ground truth ``truth_zyx`` (ints 0..C-1).

    ``policy``: how the slice is chosen (``choose_slice``); ``mode``: strokes or clicks sent
    as interactions, or strokes sent as a labelmap file; ``evaluate``: also download and
    score the proxy of every round; ``axis``: the axis of the random/oracle policies (default:
    the axis the drawn slices lie on, z at first); ``think_seconds``: the mean pause before
    each round (a person looking and drawing), each drawn from 0.5 to 1.5 times it, spent in
    ``sleep``.
    """

    def __init__(
        self,
        client: ScribbleflowClient,
        num_classes: int,
        *,
        policy: str = "residual",
        mode: str = "strokes",
        seed: int = 0,
        evaluate: bool = True,
        axis: int | None = None,
        think_seconds: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= think_seconds < math.inf:
            raise ValueError(f"think_seconds must be a finite number >= 0, got {think_seconds!r}")
        self.client = client
        self.num_classes = num_classes
        self.policy = policy
        self.mode = mode
        self.seed = seed
        self.evaluate = evaluate
        self.axis = axis
        self.think_seconds = float(think_seconds)
        self.sleep = sleep

    def submit(self, session_id: int, image: schemas.ImageOut, scribble: np.ndarray) -> schemas.RoundOut:
        if self.mode == "clicks":
            return self.client.add_round(session_id, clicks=clicks_from_scribble(scribble))
        if self.mode == "strokes":
            return self.client.add_round(session_id, scribbles=strokes_from_scribble(scribble))
        with tempfile.TemporaryDirectory() as tmp:
            path = write_volume_atomic(geometry_of(image), Path(tmp) / "scribble.nii.gz", scribble)
            return self.client.submit_labelmap(session_id, path)

    def annotate(
        self,
        image: schemas.ImageOut,
        truth_zyx: np.ndarray,
        max_rounds: int,
        target_dice: float | None = None,
        *,
        accept: bool = True,
        takeover: bool = False,
    ) -> AnnotationRecord:
        """Open a session on ``image`` and correct it round by round until the mean foreground
        Dice of the returned segmentation reaches ``target_dice`` (None: never) or after
        ``max_rounds`` rounds; then accept (when ``accept``).

        A prediction at open that already reaches the target is accepted as it is. Otherwise
        the first round draws the structures of its slice from scratch (the server keeps no
        answer before the first round); later rounds correct the answer the server returned,
        which it keeps where they draw nothing (``registration.corrections``).
        """
        truth = np.asarray(truth_zyx).astype(np.int64)
        if truth.shape != tuple(image.shape_zyx):
            raise ValueError(f"truth shape {truth.shape} != image shape {tuple(image.shape_zyx)}")
        rng = np.random.default_rng([self.seed, image.id])
        pace = np.random.default_rng([self.seed, image.id, 1])  # apart from rng: the pauses change no choice
        session = self.client.open_session(image.id, takeover=takeover)
        record = AnnotationRecord(image_id=image.id, session_id=session.id)
        prediction = self._download_session_prediction(session.id)
        record.opening_dice = dice_per_class(prediction, truth, self.num_classes)
        suggestion = session.suggestion
        drawn: set[tuple[int, int]] = set()
        segmentation = answer_before_first_round(prediction)
        if target_dice is not None and mean_foreground_dice(record.opening_dice) >= target_dice:
            record.reached_target = True
            max_rounds = 0
        for _ in range(max_rounds):
            choice = self._draw(truth, segmentation, suggestion, drawn, rng)
            if choice is None:  # every slice left is right already: nothing to fix
                break
            axis, index, scribble, fallback = choice
            drawn.add((axis, index))
            record.fallbacks += int(fallback)
            if self.think_seconds > 0:
                self.sleep(self.think_seconds * pace.uniform(0.5, 1.5))
            started = time.perf_counter()
            result = self.submit(session.id, image, scribble)
            seconds = time.perf_counter() - started
            segmentation = self._download_round(result.id, "segmentation")
            dice = dice_per_class(segmentation, truth, self.num_classes)
            proxy_dice = None
            if self.evaluate:
                proxy_dice = dice_per_class(self._download_round(result.id, "proxy"), truth, self.num_classes)
            record.rounds.append(RoundRecord(
                round=result, axis=axis, slice=index, effort=effort_of(scribble, self.mode),
                dice=dice, proxy_dice=proxy_dice, suggestion=suggestion, fallback=fallback,
                model_version=result.model_version, model_weight=result.model_weight, seconds=seconds,
            ))
            suggestion = result.suggestion
            if target_dice is not None and mean_foreground_dice(dice) >= target_dice:
                record.reached_target = True
                break
        if accept:
            record.accepted = self.client.accept(session.id)
        return record

    def _draw(
        self, truth: np.ndarray, segmentation: np.ndarray, suggestion: schemas.Suggestion | None,
        drawn: set[tuple[int, int]], rng: np.random.Generator,
    ) -> tuple[int, int, np.ndarray, bool] | None:
        """(axis, index, scribble volume, fallback) of the next round (``next_correction``)."""
        choice = next_correction(self.policy, truth, segmentation, suggestion, drawn, rng, self.num_classes,
                                 self.mode, self.axis)
        if choice is None:
            return None
        axis, index, drawing, fallback = choice
        scribble = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
        np.moveaxis(scribble, axis, 0)[index] = drawing
        return axis, index, scribble, fallback

    def _download_round(self, round_id: int, name: str) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_round_file(round_id, name, Path(tmp) / f"{name}.nii.gz")
            return read_volume(path).array.astype(np.int64)

    def _download_session_prediction(self, session_id: int) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_session_file(session_id, "prediction", Path(tmp) / "prediction.nii.gz")
            return read_volume(path).array.astype(np.int64)


def effort_of(scribble_zyx: np.ndarray, mode: str) -> dict[str, int]:
    """The effort of one round's drawing: voxels, strokes (chains), clicks, slices touched."""
    drawn = scribble_zyx != UNLABELLED
    slices = int(drawn.any())  # a round's drawing lies on one slice
    if mode == "clicks":
        return {"voxels": int(drawn.sum()), "strokes": 0, "clicks": int(drawn.sum()), "slices_touched": slices}
    return {"voxels": int(drawn.sum()), "strokes": len(strokes_from_scribble(scribble_zyx)), "clicks": 0,
            "slices_touched": slices}
