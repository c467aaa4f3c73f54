"""Fusion of the registration proxy with the model's probabilities.

Where the user labelled a voxel, that label wins. Elsewhere the two are mixed by the
proxy's confidence w (1 near annotated slices, falling with distance):
    fused = w * proxy + (1 - w) * model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from registration.propagate import Proxy, labels_from_probabilities
from registration.slice_propagation import one_hot
from registration.volume import UNLABELLED


@dataclass
class Fused:
    """labels: uint8 (z, y, x); probabilities: float32 (C, z, y, x) summing to one over C."""

    labels: np.ndarray
    probabilities: np.ndarray


def fuse_with_model(proxy: Proxy, model_probabilities: np.ndarray, user_labels: np.ndarray) -> Fused:
    """Confidence-weighted mix of ``proxy`` and ``model_probabilities`` (C, z, y, x), with the
    user's labels (z, y, x; UNLABELLED where none) imposed where given."""
    model = np.asarray(model_probabilities, dtype=np.float32)
    if model.shape != proxy.probabilities.shape:
        raise ValueError(f"model probabilities {model.shape} != proxy {proxy.probabilities.shape}")
    user = np.asarray(user_labels)
    if user.shape != proxy.labels.shape:
        raise ValueError(f"user labels {user.shape} != volume {proxy.labels.shape}")
    num_classes = model.shape[0]
    w = np.clip(proxy.confidence, 0.0, 1.0)[None]
    fused = w * proxy.probabilities + (1.0 - w) * model
    fused /= np.maximum(fused.sum(axis=0, keepdims=True), 1e-12)
    known = user != UNLABELLED
    if known.any():
        values = user[known]
        if (values >= num_classes).any() or (values < 0).any():
            raise ValueError(f"user labels outside 0..{num_classes - 1}")
        fused[:, known] = one_hot(values.astype(np.int64), num_classes)
    labels = labels_from_probabilities(fused)
    return Fused(labels, fused.astype(np.float32, copy=False))
