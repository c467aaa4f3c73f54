"""Fusion of the registration proxy with the model's probabilities, never worse than the proxy
when the model cannot be trusted.

The model's say in the answer is ``model_weight`` m in [0, 1], from ``model_reliability``
(how well the model agrees with what the user drew on this image, and its validation Dice).
Where the user labelled a voxel, that label wins. Elsewhere, per voxel,

    a     = m * (1 - w)^g * (1 - H_model)
    fused = (1 - a) * proxy + a * model

with w the proxy's confidence (1 on annotated slices, falling with distance from them), g =
PROXY_CONFIDENCE_EXPONENT and H_model the model's normalised entropy (0 = one class
certain, 1 = uniform). So an
untrusted model (m = 0) or a uniform one (H = 1) leaves the proxy exactly as it is, and a
reliable, confident model fills in where the proxy is unsure, far from the annotations.
(Mixing a flat distribution in with the proxy would otherwise pull border voxels towards
the foreground classes, because the labels turn foreground once the background falls
below one half.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from registration.io.volume import UNLABELLED
from registration.labels import one_hot
from registration.propagate import Proxy, labels_from_probabilities

#: g of the module docstring. With g = 1 a slice next to a drawn one (w = 1/2) gave the proxy
#: half the say even against a trusted model, and the more slices were drawn the more the
#: answer fell back to the proxy: with a perfect model the fused Dice fell from 0.979 after
#: round 1 to 0.964 after round 4; g = 0.5 keeps 0.993, and a fair model ends at 0.821
#: instead of 0.819 (``python -m clients.bench_rounds --data ../shared/data/acdc/val
#: --limit 10 --rounds 4 --model truth|noisy``). A model without weight (m = 0) or without
#: confidence (H = 1) still leaves the proxy exactly.
PROXY_CONFIDENCE_EXPONENT = 0.5

#: Drawn voxels needed before agreement with them counts fully: with n drawn voxels the
#: agreement is shrunk by n / (n + RELIABILITY_EVIDENCE) (a few clicks say little).
RELIABILITY_EVIDENCE = 50


@dataclass
class Fused:
    """labels: uint8 (z, y, x); probabilities: float32 (C, z, y, x) summing to one over C;
    model_weight: the m used (0 = the proxy alone)."""

    labels: np.ndarray
    probabilities: np.ndarray
    model_weight: float = 0.0


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """float32 (...) in [0, 1]: entropy of (C, ...) probabilities over log C (1 = uniform)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float32), 1e-8, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0)
    return (entropy / np.log(max(p.shape[0], 2))).clip(0.0, 1.0).astype(np.float32)


def model_share(
    confidence: np.ndarray, model_probabilities: np.ndarray, model_weight: float,
    model_entropy: np.ndarray | None = None,
) -> np.ndarray:
    """float32 (z, y, x) in [0, 1]: the model's share a = m * (1 - w)^g * (1 - H_model) of the
    fused answer (module docstring); ``model_entropy``: H_model when the caller has it."""
    far = (1.0 - np.clip(np.asarray(confidence, dtype=np.float32), 0.0, 1.0)) ** PROXY_CONFIDENCE_EXPONENT
    entropy = normalized_entropy(model_probabilities) if model_entropy is None else model_entropy
    return (model_weight * far * (1.0 - entropy)).astype(np.float32)


def drawn_agreement(model_probabilities: np.ndarray, user_labels: np.ndarray) -> tuple[float, int] | None:
    """(agreement in [0, 1], drawn voxels) of the model's argmax with the user's drawn voxels;
    None when fewer than two classes are drawn (one class cannot tell a model from a
    constant).

    Balanced accuracy over the K drawn classes, BA = mean_c |argmax = c and drawn c| / |drawn c|,
    rescaled so that a constant answer (BA = 1/K) or anything worse gives 0:
    agreement = clip((BA - 1/K) / (1 - 1/K), 0, 1).
    """
    user = np.asarray(user_labels)
    drawn = user != UNLABELLED
    if not drawn.any():
        return None
    labels = user[drawn].astype(np.int64)
    predicted = np.asarray(model_probabilities)[:, drawn].argmax(axis=0)
    classes = np.unique(labels)
    if classes.size < 2:
        return None
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in classes]
    chance = 1.0 / classes.size
    agreement = (float(np.mean(recalls)) - chance) / (1.0 - chance)
    return float(np.clip(agreement, 0.0, 1.0)), int(labels.size)


def model_reliability(
    model_probabilities: np.ndarray, user_labels: np.ndarray, validation_dice: float | None = None
) -> float:
    """How far the model can be trusted on this image, in [0, 1] (0: not at all).

    ``model_probabilities``: (C, z, y, x); ``user_labels``: (z, y, x), a class where the user
    drew, UNLABELLED elsewhere; ``validation_dice``: the model version's mean validation Dice
    when the project has measured one.

    With a = ``drawn_agreement`` (class-balanced accuracy on the drawn voxels, chance -> 0)
    shrunk by the evidence, a' = a * n / (n + RELIABILITY_EVIDENCE) for n drawn voxels, and
    v = clip(validation_dice, 0, 1):
        both known: sqrt(a' * v)   (either one being low makes the model untrustworthy)
        only one:   that one
        neither:    0.
    A uniform or random model scores 0 (its argmax is constant or at chance on the drawn
    voxels); the truth itself scores n / (n + RELIABILITY_EVIDENCE), close to 1.
    """
    model = np.asarray(model_probabilities)
    user = np.asarray(user_labels)
    if model.ndim != 4 or model.shape[1:] != user.shape:
        raise ValueError(f"model probabilities {model.shape} do not match user labels {user.shape}")
    measured = drawn_agreement(model, user)
    agreement = None
    if measured is not None:
        value, count = measured
        agreement = value * count / (count + RELIABILITY_EVIDENCE)
    validation = None if validation_dice is None else float(np.clip(validation_dice, 0.0, 1.0))
    if agreement is not None and validation is not None:
        return float(np.sqrt(agreement * validation))
    if agreement is not None:
        return float(agreement)
    if validation is not None:
        return validation
    return 0.0


def fuse_with_model(
    proxy: Proxy, model_probabilities: np.ndarray, user_labels: np.ndarray, model_weight: float = 0.0
) -> Fused:
    """The proxy with the model filling in where it is trusted (module docstring), the user's
    labels (z, y, x; UNLABELLED where none) imposed where given. ``model_weight`` = 0 returns
    the proxy's labels and probabilities unchanged (with the user's labels)."""
    model = np.asarray(model_probabilities, dtype=np.float32)
    if model.shape != proxy.probabilities.shape:
        raise ValueError(f"model probabilities {model.shape} != proxy {proxy.probabilities.shape}")
    user = np.asarray(user_labels)
    if user.shape != proxy.labels.shape:
        raise ValueError(f"user labels {user.shape} != volume {proxy.labels.shape}")
    if not 0.0 <= model_weight <= 1.0:
        raise ValueError(f"model_weight must be in [0, 1], got {model_weight}")
    num_classes = model.shape[0]
    known = user != UNLABELLED
    values = user[known].astype(np.int64)
    if values.size and (values.max() >= num_classes or values.min() < 0):
        raise ValueError(f"user labels outside 0..{num_classes - 1}")

    if model_weight > 0.0:
        share = model_share(proxy.confidence, model, model_weight)
        fused = proxy.probabilities + share[None] * (model - proxy.probabilities)
        fused = fused.astype(np.float32, copy=False)
        fused /= np.maximum(fused.sum(axis=0, keepdims=True), 1e-12)
        labels = labels_from_probabilities(fused)
    else:
        fused = np.array(proxy.probabilities, dtype=np.float32, copy=True)
        labels = np.array(proxy.labels, dtype=np.uint8, copy=True)
    if values.size:
        fused[:, known] = one_hot(values, num_classes)
        labels[known] = values.astype(np.uint8)
    return Fused(labels, fused, float(model_weight))
