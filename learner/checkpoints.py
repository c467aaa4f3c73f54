"""Checkpoint files: network weights + architecture (NetworkConfig) + free-form metadata.

File content (``torch.save`` of a plain dict, loadable with ``weights_only=True``):
    {"format": 1, "config": NetworkConfig.to_dict(), "state_dict": ..., "metadata": {...}}
Metadata is JSON-like (str, int, float, bool, None, lists, dicts). By convention the trainer
stores ``size`` (the training slice size that ``predict_volume`` needs), ``num_classes``,
``method``, ``iteration`` and ``val_mean_dice``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from learner.device import select_device
from learner.networks import NetworkConfig, build_network
from registration.io.atomic import atomic_target

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: NetworkConfig, metadata: dict) -> Path:
    """Write atomically (temp file in the same folder, then rename); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "state_dict": state, "metadata": dict(metadata)}
    with atomic_target(target) as tmp:
        torch.save(payload, tmp)
    return target


def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None
                    ) -> tuple[torch.nn.Module, NetworkConfig, dict]:
    """(model in eval mode on ``device`` (default: ``select_device()``), its config, metadata)."""
    device = select_device() if device is None else torch.device(device)
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {payload.get('format')!r}")
    config = NetworkConfig.from_dict(payload["config"])
    model = build_network(config)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), config, dict(payload["metadata"])
