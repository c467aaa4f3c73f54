"""Model versions as the API shows them, and importing an offline checkpoint as the next
version (the per-project registries and predictions are in ``model_hub``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from learner.checkpoints import load_checkpoint
from learner.registry import VersionRecord
from server.errors import BadInput
from server.schemas import ModelVersionOut
from server.services import audit
from server.services.model_hub import ModelHub
from server.services.projects import merged_learning


def import_checkpoint(db, hub: ModelHub, principal, project, path: Path, filename: str):
    """Serve an offline checkpoint as the project's next version (warm start).

    The project's learning settings follow the checkpoint: its network widths, and the
    slice size it was trained at (checkpoint metadata ``size``), so predictions and later
    online updates use the size the weights expect.
    """
    # The settings the checkpoint implies are validated before the registry serves it.
    try:
        _, network, metadata = load_checkpoint(path, device="cpu")
    except FileNotFoundError:
        raise BadInput("the checkpoint upload is missing") from None
    except Exception as exc:  # torch/pickle raise many types for a file that is no checkpoint
        raise BadInput(f"the file is not a scribbleflow checkpoint: {exc}") from None
    size = metadata.get("size")
    change: dict = {}
    channels = list(network.channels)
    multiple = 2 ** (len(channels) - 1)
    if isinstance(size, int) and size >= multiple and size % multiple == 0:
        change["online"] = {"size": size}
    learning = merged_learning(dict(project.learning, channels=channels), change)
    record = hub.import_checkpoint(project.id, path, len(project.labels))
    project.learning = learning
    audit.record(db, principal, "model_import", project_id=project.id,
                 details={"version": record.version, "file": filename, "size": project.learning["online"]["size"],
                          "channels": channels})
    db.commit()
    return record


def version_out(record: VersionRecord) -> ModelVersionOut:
    """A registry ``VersionRecord`` as the API shows it."""
    # An "averaged" version was served only inside an average version, never on its own.
    promoted = {"serving": True, "retired": True, "rejected": False, "averaged": False}.get(record.status)
    if record.source.get("kind") in ("init", "imported"):
        promoted = True if record.status in ("serving", "retired") else promoted
    return ModelVersionOut(
        version=record.version,
        created_at=datetime.fromisoformat(record.created_at) if record.created_at else None,
        serving=record.status == "serving",
        promoted=promoted,
        source=str(record.source.get("kind", "")),
        parent=record.parent,
        metrics={k: v for k, v in record.metrics.items() if k not in ("val_key", "fit_key")},
        details={"status": record.status, "reason": record.reason, "source": record.source},
    )
