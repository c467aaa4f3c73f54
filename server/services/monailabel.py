"""The MONAI Label API's use cases, mapped onto scribbleflow's own (``server/api/monailabel``).

3D Slicer's and OHIF's MONAI Label plug-ins speak this API; here it becomes:

- one project: ``Settings.monailabel_project`` (name or id), else the first project;
- image ids: an image's name (``name~<id>`` while another image of the project has the same
  name); an upload with an id that exists is refused, images are never replaced;
- infer ``segmentation``: the caller's session on the image (opened, with its lease, if needed)
  and its current segmentation; ``scribbles``: a round from the viewer's scribble labelmap;
  ``clicks``: a round from ``foreground`` / ``background`` points (voxel indices i, j, k);
- active learning: the project's stream (``first``: stream order, ``uncertainty``);
- saving the ``final`` label: accept, exactly as ``POST /api/v1/sessions/{id}/accept`` does
  (a new label version, a training job), with the viewer's label as the accepted label;
- train: the online learner's jobs (start one on the latest accepted image, status, stop).

Scribble label values (what the viewers send): a ``label_info`` list of ``{"name", "id"}``
entries names the values; ``foreground_scribbles`` marks the label named by
``selected_label_name`` (or ``label``; the only label of a one-label project by default),
``background_scribbles`` marks background, ``<label>_scribbles`` marks that label, and other
entries (the segmentation's own segments) are not user input. Without ``label_info`` the
values are MONAI Label's defaults: background ``L + 1``, foreground ``L + 2`` for a project
of ``L`` labels. OHIF sends the labelmap as raw bytes (``.bin``, uint8, the image's voxel order).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from registration.io.volume import UNLABELLED, Volume, write_volume_atomic
from server import schemas
from server.auth import Principal
from server.context import AppContext
from server.errors import BadInput, Conflict, NotFound
from server.services import history, images, projects, rounds, sessions, stream
from server.services.records import ROUND_FILES, SESSION_FILES
from server.services.uploads import read_upload, strip_format_suffix
from server.settings import Settings
from server.storage.tables import AnnotationSession, AuditEvent, Image, Project, Round, TrainingJob

BACKGROUND = "background"
FINAL_TAG = "final"
TRAINER = "scribbleflow"
# Model name -> (MONAI Label model type, what it does). The viewers group models by type:
# "deepgrow" models get the point tools, "scribbles" models the scribble brushes.
MODELS: dict[str, tuple[str, str]] = {
    "segmentation": ("segmentation", "The session's opening (the serving model's prediction or the atlas), "
                                     "or the image's current segmentation."),
    "scribbles": ("scribbles", "A round from a scribble labelmap: registration + fusion with the model."),
    "clicks": ("deepgrow", "A round from foreground/background clicks (voxel indices i, j, k)."),
}
# Active-learning strategy -> stream order (server.services.stream).
STRATEGIES: dict[str, tuple[str, str]] = {
    "first": ("stream", "The next image in upload order that is not accepted or leased by someone else."),
    "uncertainty": ("uncertainty", "The pending image the serving model is least certain about."),
}
RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32")
# Training job state -> MONAI Label task status.
TASK_STATUS = {"queued": "SUBMITTED", "running": "RUNNING", "succeeded": "DONE", "failed": "ERROR",
               "cancelled": "STOPPED", "superseded": "STOPPED"}
_ID_SUFFIX = re.compile(r"(.*)~(\d{1,12})")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_ID_LENGTH = 300


# --- the project and its images -------------------------------------------------------------


def served_project(db: Session, settings: Settings) -> Project | None:
    """The project this API serves, or None while there is none."""
    wanted = settings.monailabel_project
    if wanted is None:
        return db.scalar(select(Project).order_by(Project.id).limit(1))
    project = db.scalar(select(Project).where(Project.name == wanted))
    if project is None and wanted.isdigit():
        project = db.get(Project, int(wanted))
    return project


def require_project(db: Session, settings: Settings) -> Project:
    project = served_project(db, settings)
    if project is None:
        wanted = settings.monailabel_project
        if wanted is not None:
            raise NotFound(f"project {wanted!r} (SCRIBBLEFLOW_MONAILABEL_PROJECT) does not exist")
        raise NotFound("there is no project yet: an admin creates one with POST /api/v1/projects")
    return project


def check_id(image_id: str, what: str = "image id") -> str:
    if not image_id or len(image_id) > _MAX_ID_LENGTH:
        raise BadInput(f"the {what} must have 1 to {_MAX_ID_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in image_id):
        raise BadInput(f"the {what} must not contain control characters")
    return image_id


def _duplicated_names(db: Session, project_id: int) -> set[str]:
    counts = Counter(db.scalars(select(Image.name).where(Image.project_id == project_id)))
    return {name for name, count in counts.items() if count > 1}


def image_key(image: Image, duplicated: set[str]) -> str:
    """The MONAI Label id of ``image``."""
    return f"{image.name}~{image.id}" if image.name in duplicated else image.name


def key_of(db: Session, image: Image) -> str:
    return image_key(image, _duplicated_names(db, image.project_id))


def find_image(db: Session, project: Project, image_id: str) -> Image:
    check_id(image_id)
    match = _ID_SUFFIX.fullmatch(image_id)
    if match:
        row = db.get(Image, int(match[2]))
        if row is not None and row.project_id == project.id and row.name == match[1]:
            return row
    rows = list(db.scalars(select(Image).where(Image.project_id == project.id, Image.name == image_id)))
    if len(rows) == 1:
        return rows[0]
    if rows:
        ids = ", ".join(f"{image_id}~{r.id}" for r in rows[:5])
        raise Conflict(f"several images of project {project.name!r} are named {image_id!r}; use one of {ids}")
    raise NotFound(f"image {image_id!r} not found in project {project.name!r}")


def file_name(image_id: str, suffix: str = ".nii.gz") -> str:
    """A file name for downloads (viewers pick the reader by its suffix)."""
    stem = _UNSAFE_FILE_CHARS.sub("_", image_id).strip("._") or "image"
    return f"{stem[:100]}{suffix}"


def _timestamp(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image_info(ctx: AppContext, image: Image, key: str, checksum: bool = False) -> dict[str, Any]:
    """What MONAI Label's datastore tells about an image (``/datastore/image/info``)."""
    info: dict[str, Any] = {
        "name": file_name(key),
        "ts": _timestamp(image.created_at),
        "url": f"/datastore/image?image={quote_plus(key)}",
        "strategy": {},
        "scribbleflow": {
            "image_id": image.id, "status": image.status, "stream_position": image.stream_position,
            "is_validation": image.is_validation, "shape_zyx": list(image.shape_zyx),
            "links": {"self": f"{schemas.API_PREFIX}/images/{image.id}"},
        },
    }
    if checksum:
        info["checksum"] = "SHA256:" + _sha256(ctx.datastore.resolve(image.path))
    return info


def label_info(db: Session, image: Image) -> dict[str, Any]:
    """The accepted (``final``) label: how many versions were saved, when and by whom."""
    versions = len(list(db.scalars(
        select(AuditEvent.id).where(AuditEvent.image_id == image.id, AuditEvent.action == "accept")
    )))
    return {"version": versions, "ts": _timestamp(image.accepted_at), "user": image.accepted_by,
            "round_id": image.accepted_round_id}


# --- info and datastore listings ------------------------------------------------------------


def datastore_stats(db: Session, project: Project | None) -> dict[str, Any]:
    if project is None:
        return {"total": 0, "completed": 0, "label_tags": {}}
    rows = images.list_images(db, project.id)
    completed = sum(1 for r in rows if r.accepted_path)
    return {"total": len(rows), "completed": completed, "label_tags": {FINAL_TAG: completed} if completed else {}}


def datastore_objects(ctx: AppContext, db: Session, project: Project) -> dict[str, Any]:
    rows = images.list_images(db, project.id)
    duplicated = _duplicated_names(db, project.id)
    objects = {}
    for image in rows:
        key = image_key(image, duplicated)
        labels = {FINAL_TAG: {"ext": ".nii.gz", "info": label_info(db, image)}} if image.accepted_path else {}
        objects[key] = {"image": {"ext": ".nii.gz", "info": image_info(ctx, image, key)}, "labels": labels}
    return {"name": project.name, "description": project.description, "images_dir": "", "labels_dir": "labels",
            "objects": objects}


def datalist(db: Session, project: Project) -> list[dict[str, str]]:
    """Image/label pairs with a final label, as download paths of this API (not server files)."""
    duplicated = _duplicated_names(db, project.id)
    pairs = []
    for image in images.list_images(db, project.id):
        if image.accepted_path:
            key = quote_plus(image_key(image, duplicated))
            pairs.append({"image": f"/datastore/image?image={key}",
                          "label": f"/datastore/label?label={key}&tag={FINAL_TAG}"})
    return pairs


def _serving_stats(ctx: AppContext, project: Project) -> dict[str, Any]:
    record = ctx.hub.registry(project.id).serving_record()
    if record is None:
        return {}
    dice = record.metrics.get("val_dice")
    return {"model_version": record.version, "best_metric": float(dice) if dice is not None else 0.0,
            "best_metric_epoch": record.version, "epoch": record.version, "total_epochs": record.version,
            "versions": len(ctx.hub.versions(project.id)), "start_ts": record.created_at}


def info(ctx: AppContext, db: Session, project: Project | None, version: str) -> dict[str, Any]:
    if project is None:
        return {"name": "scribbleflow", "version": version, "labels": [], "models": {}, "trainers": {},
                "strategies": {}, "scoring": {}, "train_stats": {}, "datastore": datastore_stats(db, None),
                "description": "No project yet: an admin creates one with POST /api/v1/projects."}
    names = projects.label_names(project)
    foreground = {name: value for value, name in enumerate(names) if value > 0}
    models = {
        name: {"type": kind, "labels": dict(foreground), "dimension": 3, "description": text, "config": {}}
        for name, (kind, text) in MODELS.items()
    }
    return {
        "name": f"scribbleflow: {project.name}",
        "description": project.description or "Segmentation that learns online from scribbles and clicks.",
        "version": version,
        "labels": list(foreground),
        "models": models,
        "trainers": {TRAINER: {"description": "Online learning from saved labels and rounds (replay, "
                                              "label smoothing); a new version is served when it passes "
                                              "the promotion gate.", "config": {}}},
        "strategies": {name: {"description": text} for name, (_, text) in STRATEGIES.items()},
        "scoring": {},
        "train_stats": {TRAINER: _serving_stats(ctx, project)},
        "datastore": datastore_stats(db, project),
        "scribbleflow": {"project_id": project.id, "project": project.name, "label_names": names,
                         "api": schemas.API_PREFIX},
    }


# --- uploads ----------------------------------------------------------------------------------


def add_image(
    ctx: AppContext, db: Session, principal: Principal, project: Project, upload_path: Path, filename: str,
    image_id: str | None,
) -> tuple[Image, str]:
    """A new image named ``image_id`` (default: the file name without its suffix)."""
    key = check_id((image_id or strip_format_suffix(Path(filename).name)).strip())
    if _ID_SUFFIX.fullmatch(key):
        raise BadInput(f"image id {key!r} ends like a generated id (~number); choose another")
    taken = db.scalar(select(Image.id).where(Image.project_id == project.id, Image.name == key).limit(1))
    if taken is not None:
        raise Conflict(f"image id {key!r} exists already in project {project.name!r}; "
                       "images are never replaced: upload under another id")
    image = images.upload_image(db, ctx.datastore, principal, project, upload_path, filename, key,
                                ctx.settings.max_upload_bytes)
    return image, key


def _read_label_array(ctx: AppContext, image: Image, upload_path: Path, filename: str) -> np.ndarray:
    """An uploaded label volume, or raw ``.bin`` bytes (uint8 in the image's voxel order), as (z, y, x)."""
    shape = tuple(image.shape_zyx)
    if filename.lower().endswith(".bin"):
        data = np.fromfile(upload_path, dtype=np.uint8)
        if data.size != int(np.prod(shape)):
            raise BadInput(f"the .bin labelmap has {data.size} bytes; the image has {int(np.prod(shape))} voxels "
                           "(one uint8 per voxel expected)")
        return data.reshape(shape)
    array = read_upload(upload_path, filename, ctx.settings.max_upload_bytes).volume.array
    if tuple(array.shape) != shape:
        raise BadInput(f"the label has size (i, j, k) {list(array.shape[::-1])}, the image has {list(shape[::-1])}")
    if np.issubdtype(array.dtype, np.floating) and np.any(array != np.rint(array)):
        raise BadInput("the label must hold whole numbers, found fractional values")
    if array.min() < 0:
        raise BadInput("the label holds negative values")
    return array.astype(np.int64)


def _label_info_entries(params: dict[str, Any]) -> list[tuple[str, int]]:
    """``params["label_info"]`` as (name, value) pairs; values come from ``id`` or ``idx``."""
    entries = params.get("label_info")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise BadInput("params.label_info must be a list of {name, id} objects")
    pairs = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadInput("params.label_info must be a list of {name, id} objects")
        value = next((entry[k] for k in ("id", "idx", "segmentIndex") if isinstance(entry.get(k), int)
                      and not isinstance(entry.get(k), bool)), None)
        if value is not None:
            pairs.append((entry["name"], int(value)))
    return pairs


def _label_by_name(names: list[str], name: Any, what: str) -> int:
    if not isinstance(name, str) or name not in names:
        raise BadInput(f"{what} {name!r} is not a label of this project (labels: {', '.join(names[1:])})")
    return names.index(name)


def final_label_values(array: np.ndarray, names: list[str], params: dict[str, Any]) -> np.ndarray:
    """A saved label as project label values (0 = background, 1.. = ``names[1:]``), uint8.

    With ``label_info`` the values are looked up by segment name (as 3D Slicer sends them);
    without, they are taken as the project's label values."""
    values = [int(v) for v in np.unique(array)]
    lookup: dict[int, int] = {0: 0}
    pairs = [(n, v) for n, v in _label_info_entries(params) if not n.endswith("_scribbles")]
    if pairs:
        for name, value in pairs:
            lookup[value] = 0 if name == BACKGROUND else _label_by_name(names, name, "segment")
    else:
        lookup.update({v: v for v in range(len(names))})
    unknown = [v for v in values if v not in lookup]
    if unknown:
        expected = "the values named in label_info" if pairs else f"0..{len(names) - 1}"
        raise BadInput(f"label value(s) {unknown[:10]} are not labels of this project; expected {expected}")
    labels = np.zeros(array.shape, dtype=np.uint8)
    for value, label in lookup.items():  # a few segments: no lookup table as large as the largest value
        if label:
            labels[array == value] = label
    return labels


def scribble_seeds(array: np.ndarray, names: list[str], params: dict[str, Any]) -> np.ndarray:
    """The viewer's scribble labelmap as seeds: project label values, ``UNLABELLED`` elsewhere."""
    pairs = _label_info_entries(params)
    foreground_count = len(names) - 1
    background_value, foreground_value = foreground_count + 1, foreground_count + 2  # MONAI Label's defaults
    per_label: dict[int, int] = {}
    for name, value in pairs:
        if name == "background_scribbles":
            background_value = value
        elif name == "foreground_scribbles":
            foreground_value = value
        elif name.endswith("_scribbles"):
            per_label[value] = _label_by_name(names, name[: -len("_scribbles")], "scribble layer of label")
    seeds = np.full(array.shape, UNLABELLED, dtype=np.uint8)
    if np.any(array == foreground_value):
        seeds[array == foreground_value] = _selected_label(names, params, "foreground scribbles")
    seeds[array == background_value] = 0
    for value, label in per_label.items():
        seeds[array == value] = label
    if not np.any(seeds != UNLABELLED):
        raise BadInput(f"no scribbles in the labelmap: foreground scribbles have value {foreground_value}, "
                       f"background scribbles {background_value} (name others in params.label_info)")
    return seeds


def _selected_label(names: list[str], params: dict[str, Any], what: str) -> int:
    name = params.get("selected_label_name", params.get("label"))
    if name is None:
        if len(names) == 2:
            return 1
        raise BadInput(f"{what}: name their label in params.selected_label_name (or params.label); "
                       f"this project has several: {', '.join(names[1:])}")
    return _label_by_name(names, name, "label")


def _points(value: Any, what: str) -> list[tuple[float, float, float]]:
    if not isinstance(value, list) or not all(
        isinstance(p, list | tuple) and len(p) == 3
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p) for p in value
    ):
        raise BadInput(f"params.{what} must be a list of [i, j, k] voxel indices")
    return [(float(p[0]), float(p[1]), float(p[2])) for p in value]


def click_round(names: list[str], params: dict[str, Any]) -> schemas.RoundCreate:
    """Clicks from ``foreground``/``background`` points of ``label`` (Deepgrow) or points per label
    name (DeepEdit); points are voxel indices (i, j, k) as the viewers send them."""
    clicks: list[dict[str, Any]] = []
    for value, name in enumerate(names):
        if name in params and name not in ("foreground", "background", "label"):
            clicks += [{"point": p, "label": value} for p in _points(params[name], name)]
    foreground = _points(params.get("foreground", []), "foreground")
    background = _points(params.get("background", []), "background")
    if foreground or background:
        if not foreground and params.get("label", params.get("selected_label_name")) is None and len(names) > 2:
            clicks += [{"point": p, "label": 0} for p in background]  # background points alone: background
        else:
            label = _selected_label(names, params, "foreground/background points")
            clicks += [{"point": p, "label": label} for p in foreground]
            clicks += [{"point": p, "label": label, "positive": False} for p in background]
    if not clicks:
        raise BadInput("no points: send params.foreground / params.background (voxel indices [i, j, k])")
    try:
        return schemas.RoundCreate(clicks=clicks)
    except ValidationError as exc:
        raise BadInput(f"invalid points: {exc.errors()[0].get('msg', 'invalid')}") from None


def parse_params(text: str | None) -> dict[str, Any]:
    try:
        params = json.loads(text) if text else {}
    except ValueError:
        raise BadInput("params must be a JSON object") from None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadInput("params must be a JSON object")
    return params


# --- infer ------------------------------------------------------------------------------------


@dataclass
class InferAnswer:
    labels: np.ndarray  # (z, y, x)
    geometry: Volume
    params: dict[str, Any]
    file_name: str


def infer(
    ctx: AppContext, db: Session, principal: Principal, project: Project, model: str, image: Image,
    params: dict[str, Any], label_upload: tuple[Path, str] | None,
) -> InferAnswer:
    if model not in MODELS:
        raise NotFound(f"model {model!r} not found; models: {', '.join(MODELS)}")
    started = time.perf_counter()
    names = projects.label_names(project)
    volume = images.load_volume(ctx.datastore, image)
    single_label: int | None = None
    seeds = round_request = None
    if model == "scribbles":
        if label_upload is None:
            raise BadInput("the scribbles model needs the scribble labelmap as the multipart 'label' part")
        seeds = scribble_seeds(_read_label_array(ctx, image, *label_upload), names, params)
        if "selected_label_name" in params or "label" in params:
            single_label = _selected_label(names, params, "scribbles")
    elif model == "clicks":
        round_request = click_round(names, params)
        if "foreground" in params or "background" in params:
            if params.get("label", params.get("selected_label_name")) is not None:
                single_label = _selected_label(names, params, "points")
    prepared = time.perf_counter()

    session = sessions.open_session(ctx, db, principal, image, takeover=False)
    row: Round | None = None
    if seeds is not None:
        row = _labelmap_round(ctx, db, principal, session, volume, seeds)
    elif round_request is not None:
        row = rounds.add_round(ctx, db, principal, session, round_request)
    current = row or history.active_round(db, image.id)
    if current is not None:
        source = f"{current.dir}/{ROUND_FILES['segmentation']}"
    else:
        source = f"{session.dir}/{SESSION_FILES['prediction']}"
    segmentation = ctx.datastore.read_volume(source).array.astype(np.uint8)
    computed = time.perf_counter()

    if single_label is not None:
        result = (segmentation == single_label).astype(np.uint8)
        label_names = {BACKGROUND: 0, names[single_label]: 1}
    else:
        result = segmentation
        label_names = {(BACKGROUND if v == 0 else n): v for v, n in enumerate(names)}
    finished = time.perf_counter()
    answer_params = {
        "label_names": label_names,
        "latencies": {"pre": round(prepared - started, 4), "infer": round(computed - prepared, 4),
                      "invert": 0.0, "post": round(finished - computed, 4), "write": 0.0,
                      "total": round(finished - started, 4)},
        "scribbleflow": {
            "session_id": session.id, "round_id": current.id if current else None,
            "model_version": (current or session).model_version,
            "prediction_source": (current or session).prediction_source,
            "label_counts": (current or session).label_counts, "suggestion": (current or session).suggestion,
        },
    }
    stem = f"label_{image.id}_{'round' if current else 'session'}_{current.id if current else session.id}"
    return InferAnswer(result, volume, answer_params, stem)


def _labelmap_round(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession, volume: Volume,
    seeds: np.ndarray,
) -> Round:
    with tempfile.TemporaryDirectory(dir=ctx.datastore.tmp_dir) as tmp:
        path = write_volume_atomic(volume, Path(tmp) / "scribbles.nii.gz", seeds)
        return rounds.add_labelmap_round(ctx, db, principal, session, path, path.name)


def encode_result(answer: InferAnswer, params: dict[str, Any]) -> tuple[bytes, str]:
    """The label volume as file bytes in the format the viewer asked for: (bytes, file name)."""
    extension = params.get("result_extension", ".nii.gz")
    if extension not in RESULT_EXTENSIONS:
        raise BadInput(f"result_extension {extension!r} is not supported; use one of {', '.join(RESULT_EXTENSIONS)}")
    dtype = params.get("result_dtype", "uint8")
    if dtype not in RESULT_DTYPES:
        raise BadInput(f"result_dtype {dtype!r} is not supported; use one of {', '.join(RESULT_DTYPES)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_volume_atomic(answer.geometry, Path(tmp) / f"result{extension}",
                                   answer.labels.astype(dtype))
        return path.read_bytes(), f"{answer.file_name}{extension}"


# --- final labels -----------------------------------------------------------------------------


def save_final_label(
    ctx: AppContext, db: Session, principal: Principal, project: Project, image: Image, upload_path: Path,
    filename: str, params: dict[str, Any],
) -> tuple[Image, TrainingJob | None, int]:
    """Accept ``image`` with the uploaded label (a new version; the earlier ones stay)."""
    names = projects.label_names(project)
    label = final_label_values(_read_label_array(ctx, image, upload_path, filename), names, params)
    session = sessions.open_session(ctx, db, principal, image, takeover=False)
    _session, image, job = sessions.accept(ctx, db, principal, session, final_label=label)
    return image, job, label_info(db, image)["version"]


# --- active learning --------------------------------------------------------------------------


def next_sample(ctx: AppContext, db: Session, principal: Principal, project: Project, strategy: str) -> dict:
    if strategy not in STRATEGIES:
        raise NotFound(f"strategy {strategy!r} not found; strategies: {', '.join(STRATEGIES)}")
    image = stream.next_image(ctx, db, principal, project, STRATEGIES[strategy][0])
    if image is None:
        return {}
    key = key_of(db, image)
    # No server path ("path" is empty): the viewers then download the image from "url".
    return {"id": key, "path": "", **image_info(ctx, image, key, checksum=True)}


# --- training ---------------------------------------------------------------------------------

_ACTIVE = ("queued", "running")


def _format_ts(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def task_out(db: Session, job: TrainingJob) -> dict[str, Any]:
    """A training job as a MONAI Label task."""
    image = db.get(Image, job.image_id) if job.image_id is not None else None
    task = {
        "id": str(job.id),
        "status": TASK_STATUS.get(job.state, job.state.upper()),
        "request": {"model": TRAINER, "trigger": job.trigger, "image": key_of(db, image) if image else None},
        "start_ts": _format_ts(job.started_at or job.created_at),
        "details": [job.message] if job.message else [],
        "progress": job.progress,
        "result": job.result or {},
        "scribbleflow_job_id": job.id,
    }
    if job.finished_at is not None:
        task["end_ts"] = _format_ts(job.finished_at)
    return task


def _latest_job(db: Session, project: Project, active_only: bool = False) -> TrainingJob | None:
    query = select(TrainingJob).where(TrainingJob.project_id == project.id)
    if active_only:
        query = query.where(TrainingJob.state.in_(_ACTIVE))
    return db.scalar(query.order_by(TrainingJob.id.desc()).limit(1))


def train_start(ctx: AppContext, db: Session, principal: Principal, project: Project, model: str | None) -> dict:
    """A training job on the latest accepted image (the replay buffer brings the earlier ones);
    while a job of the project is queued or running, that job."""
    if model and model != TRAINER:
        raise NotFound(f"trainer {model!r} not found; trainers: {TRAINER}")
    running = _latest_job(db, project, active_only=True)
    if running is not None:
        return task_out(db, running)
    image = db.scalar(
        select(Image).where(Image.project_id == project.id, Image.accepted_path.is_not(None),
                            Image.is_validation.is_(False)).order_by(Image.accepted_at.desc()).limit(1)
    )
    if image is None:
        raise Conflict("nothing to train on yet: save a final label of an image first")
    store = ctx.datastore
    files = {"accepted_label": store.resolve(image.accepted_path)}
    accepted_round = db.get(Round, image.accepted_round_id) if image.accepted_round_id else None
    if accepted_round is not None:
        files["scribble"] = store.resolve(f"{accepted_round.dir}/{ROUND_FILES['scribble']}")
    job = ctx.training.submit(db, principal, project, image, trigger="train", round_id=image.accepted_round_id,
                              files=files, reference_version=None)
    if job is None:
        raise Conflict(f"image {image.name!r} is held out for validation and does not train the model")
    return task_out(db, job)


def train_status(db: Session, project: Project, every: bool, check_if_running: bool) -> dict | list[dict]:
    if every:
        rows = db.scalars(select(TrainingJob).where(TrainingJob.project_id == project.id)
                          .order_by(TrainingJob.id.desc()).limit(1000))
        return [task_out(db, job) for job in reversed(list(rows))]
    job = _latest_job(db, project, active_only=check_if_running)
    if job is None:
        raise NotFound("no training job is running" if check_if_running else "no training jobs yet")
    return task_out(db, job)


def train_stop(ctx: AppContext, db: Session, project: Project) -> dict:
    """Cancel the project's queued and running jobs; the latest of them as a task (``{}`` if none)."""
    active = list(db.scalars(select(TrainingJob).where(TrainingJob.project_id == project.id,
                                                       TrainingJob.state.in_(_ACTIVE))))
    if not active:
        return {}
    db.commit()
    ctx.training.cancel_project_jobs(project.id, "stopped through the MONAI Label API")
    latest = db.get(TrainingJob, max(job.id for job in active))
    db.refresh(latest)
    return task_out(db, latest)
