"""A simulated annotator: draws scribbles from a ground-truth label where the server suggests.

It drives the real REST API through ``clients.client.ScribbleflowClient``, like a
radiology tool would: open a session, look at the suggestion (slice and axis), draw
scribbles on that slice with ``learner.scribbles.simulate_scribbles`` (strokes along the
core of each structure and around it), submit them as a round — either as a scribble
labelmap (NIfTI with the image's geometry) or as strokes of voxel indices (i, j, k) —
and finally accept. Arrays are (z, y, x).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.client import ScribbleflowClient
from registration.volume import UNLABELLED, Volume, read_volume
from server import schemas


@dataclass
class RoundRecord:
    round: schemas.RoundOut
    axis: int
    slice: int
    effort: dict
    dice: dict[int, float] | None = None


@dataclass
class AnnotationRecord:
    image_id: int
    session_id: int
    rounds: list[RoundRecord] = field(default_factory=list)
    accepted: schemas.AcceptOut | None = None


def geometry_of(image: schemas.ImageOut) -> Volume:
    """An empty volume with the image's geometry (to write labelmaps the server accepts)."""
    return Volume(
        np.zeros(tuple(image.shape_zyx), dtype=np.uint8),
        tuple(image.spacing_xyz),
        tuple(image.origin_xyz),
        tuple(image.direction),
    )


def choose_slice(
    truth_zyx: np.ndarray, suggestion: schemas.Suggestion | None, drawn: set[tuple[int, int]], num_classes: int
) -> tuple[int, int]:
    """(axis, slice): the suggested one if not drawn yet, else the undrawn z-slice with most foreground."""
    if suggestion is not None and (suggestion.axis, suggestion.slice) not in drawn:
        return suggestion.axis, suggestion.slice
    foreground = ((truth_zyx > 0) & (truth_zyx < num_classes)).sum(axis=(1, 2))
    order = np.argsort(-foreground, kind="stable")
    for z in order:
        if (0, int(z)) not in drawn:
            return 0, int(z)
    return 0, int(order[0])


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


class SimulatedAnnotator:
    """Annotates one image at a time from its ground truth ``truth_zyx`` (ints 0..C-1)."""

    def __init__(
        self,
        client: ScribbleflowClient,
        num_classes: int,
        *,
        seed: int = 0,
        mode: str = "labelmap",
        evaluate: bool = False,
    ):
        if mode not in ("labelmap", "strokes"):
            raise ValueError(f"mode must be 'labelmap' or 'strokes', got {mode!r}")
        self.client = client
        self.num_classes = num_classes
        self.seed = seed
        self.mode = mode
        self.evaluate = evaluate

    def draw(
        self, truth_zyx: np.ndarray, suggestion: schemas.Suggestion | None, drawn: set[tuple[int, int]], round_index: int
    ):
        """The scribbles of one round (uint8 (z, y, x), UNLABELLED where none), axis, slice, effort."""
        from learner.scribbles import simulate_scribbles

        axis, index = choose_slice(truth_zyx, suggestion, drawn, self.num_classes)
        simulated = simulate_scribbles(
            truth_zyx, num_classes=self.num_classes, slices=[index], axis=axis, seed=self.seed + round_index
        )
        return simulated.scribble, axis, index, simulated.effort.to_dict()

    def submit(self, session_id: int, image: schemas.ImageOut, scribble: np.ndarray) -> schemas.RoundOut:
        if self.mode == "strokes":
            return self.client.add_round(session_id, scribbles=strokes_from_scribble(scribble))
        from registration.volume import write_volume_atomic

        with tempfile.TemporaryDirectory() as tmp:
            path = write_volume_atomic(geometry_of(image), Path(tmp) / "scribble.nii.gz", scribble)
            return self.client.submit_labelmap(session_id, path)

    def annotate(
        self, image: schemas.ImageOut, truth_zyx: np.ndarray, rounds: int, *, accept: bool = True,
        takeover: bool = False,
    ) -> AnnotationRecord:
        """Open a session on ``image``, submit ``rounds`` rounds of scribbles, then accept."""
        truth = np.asarray(truth_zyx).astype(np.int64)
        if truth.shape != tuple(image.shape_zyx):
            raise ValueError(f"truth shape {truth.shape} != image shape {tuple(image.shape_zyx)}")
        session = self.client.open_session(image.id, takeover=takeover)
        record = AnnotationRecord(image_id=image.id, session_id=session.id)
        suggestion = session.suggestion
        drawn: set[tuple[int, int]] = set()
        for round_index in range(rounds):
            scribble, axis, index, effort = self.draw(truth, suggestion, drawn, round_index)
            drawn.add((axis, index))
            result = self.submit(session.id, image, scribble)
            dice = self.segmentation_dice(result.id, truth) if self.evaluate else None
            record.rounds.append(RoundRecord(result, axis, index, effort, dice))
            suggestion = result.suggestion
        if accept:
            record.accepted = self.client.accept(session.id)
        return record

    def segmentation_dice(self, round_id: int, truth_zyx: np.ndarray) -> dict[int, float]:
        from learner.metrics import dice_per_class

        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_round_file(round_id, "segmentation", Path(tmp) / "segmentation.nii.gz")
            segmentation = read_volume(path).array
        return dice_per_class(segmentation.astype(np.int64), truth_zyx, self.num_classes)
