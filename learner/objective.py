"""Training objectives: which losses each method combines, with which weights, and which
network and teacher it needs. The single source of truth for the method names.

Methods (AttenScribble and ScribSD+ facts in ../shared/SPEC.md):
    pce        pCE on scribbled pixels.
    pce_crf    pCE + crf * masked gated CRF on unlabelled pixels.
    attention  pCE + crf * CRF + attentive * attentive similarity (AttenScribble; the network
               has a self-attention block after the second encoder stage).
    distill    pCE + crf * CRF + ramp * (distill * multi-scale KD from an EMA teacher
               + contrastive * class-wise contrastive) (ScribSD+); ramp(t) = exp(-5 (1 - t)^2)
               over the first ``rampup_fraction`` of training, 1 afterwards.
    full       CE + Dice on dense labels (the fully supervised upper bound).
    online     confidence-weighted soft-target CE on proxy targets + dice * weighted soft
               Dice over the foreground classes (class balancing) + pCE on the user's own
               voxels + crf * CRF (used by learner/online.py).

Batch keys (all on the model's device): image (B, 1, H, W) float in [0, 1]; scribble (B, H, W)
long with UNLABELLED where nothing was drawn; label (B, H, W) long (full); target (B, C, H, W)
probabilities and weight (B, H, W) in [0, 1] (online).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from learner.losses import (
    AttentiveSimilarityLoss,
    ClassContrastiveLoss,
    EMATeacher,
    MaskedGatedCRFLoss,
    MultiScaleDistillationLoss,
    PartialCrossEntropyLoss,
    SoftDiceLoss,
    SoftTargetCrossEntropyLoss,
)
from learner.networks import NetworkConfig, SegmentationOutput
from registration.io.volume import UNLABELLED

METHODS = ("pce", "pce_crf", "attention", "distill", "full", "online")
#: Methods trained from scribbles (the others need dense labels or proxy targets).
SCRIBBLE_METHODS = ("pce", "pce_crf", "attention", "distill")
#: AttenScribble's placement: after the second down-sampling stage (see learner/networks.py).
ATTENTION_STAGE = 1


@dataclass(frozen=True)
class ObjectiveWeights:
    crf: float = 0.1
    attentive: float = 0.1
    distill: float = 1.0
    contrastive: float = 0.1
    dice: float = 1.0
    rampup_fraction: float = 0.3
    teacher_decay: float = 0.99
    teacher_noise: float = 0.05  # std of the Gaussian noise on the teacher's input
    crf_downsample: int = 1  # CRF on probabilities average-pooled by this factor (faster)


def network_config_for(method: str, num_classes: int, in_channels: int = 1, **overrides) -> NetworkConfig:
    """The architecture a method trains: attention block for ``attention``, auxiliary
    decoder heads for ``distill`` only (the others do not use them)."""
    _check_method(method)
    config = NetworkConfig(
        in_channels=in_channels,
        num_classes=num_classes,
        attention_after=(ATTENTION_STAGE,) if method == "attention" else (),
        deep_supervision=method == "distill",
    )
    return replace(config, **overrides) if overrides else config


def rampup(progress: float, fraction: float) -> float:
    """Sigmoid-shaped ramp exp(-5 (1 - t)^2), t = progress / fraction clipped to [0, 1]."""
    if fraction <= 0:
        return 1.0
    t = min(max(progress / fraction, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


class Objective:
    """Callable ``(student_output, batch, teacher_output=None) -> {"total": .., parts ..}``.

    ``progress`` (0 .. 1, set by the trainer) drives the distillation ramp-up. Methods with
    a teacher (``uses_teacher``) need :meth:`bind` once with the student; the training step
    then calls :meth:`teacher_output` before and :meth:`after_step` after each update.
    """

    def __init__(self, method: str, num_classes: int, weights: ObjectiveWeights | None = None):
        _check_method(method)
        self.method = method
        self.num_classes = int(num_classes)
        self.weights = weights or ObjectiveWeights()
        self.progress = 0.0
        self.teacher: EMATeacher | None = None
        self.pce = PartialCrossEntropyLoss(ignore_index=UNLABELLED)
        self.crf = MaskedGatedCRFLoss(downsample=self.weights.crf_downsample)
        self.attentive = AttentiveSimilarityLoss()
        self.distillation = MultiScaleDistillationLoss()
        self.contrastive = ClassContrastiveLoss()
        self.soft_ce = SoftTargetCrossEntropyLoss()
        self.soft_dice = SoftDiceLoss()

    @property
    def uses_teacher(self) -> bool:
        return self.method == "distill"

    @property
    def uses_crf(self) -> bool:
        return self.method in ("pce_crf", "attention", "distill", "online") and self.weights.crf > 0

    def bind(self, model: torch.nn.Module) -> None:
        if self.uses_teacher:
            self.teacher = EMATeacher(model, decay=self.weights.teacher_decay)

    def teacher_output(self, batch: dict) -> SegmentationOutput | None:
        if not self.uses_teacher:
            return None
        if self.teacher is None:
            raise RuntimeError("Objective.bind(model) must be called before training with a teacher")
        image = batch["image"]
        noisy = image + self.weights.teacher_noise * torch.randn_like(image)
        return self.teacher(noisy)

    def after_step(self, model: torch.nn.Module) -> None:
        if self.teacher is not None:
            self.teacher.update(model)

    def _crf_term(self, probs: torch.Tensor, batch: dict) -> torch.Tensor:
        scribble = batch.get("scribble")
        if scribble is None:
            unlabelled = torch.ones(probs.shape[0], *probs.shape[2:], dtype=torch.bool, device=probs.device)
        else:
            unlabelled = scribble == UNLABELLED
        return self.crf(probs, batch["image"], unlabelled)

    def __call__(self, student: SegmentationOutput, batch: dict,
                 teacher_output: SegmentationOutput | None = None) -> dict[str, torch.Tensor]:
        w = self.weights
        logits = student.logits
        probs = torch.softmax(logits, dim=1)
        parts: dict[str, torch.Tensor] = {}
        if self.method == "full":
            label = batch["label"]
            parts["ce"] = F.cross_entropy(logits, label)
            one_hot = F.one_hot(label, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype)
            intersection = (probs * one_hot).sum(dim=(0, 2, 3))
            denominator = probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
            parts["dice"] = 1.0 - ((2 * intersection + 1e-5) / (denominator + 1e-5)).mean()
            total = parts["ce"] + w.dice * parts["dice"]
        elif self.method == "online":
            parts["soft_ce"] = self.soft_ce(logits, batch["target"], batch.get("weight"))
            total = parts["soft_ce"]
            if w.dice > 0:
                parts["dice"] = self.soft_dice(logits, batch["target"], batch.get("weight"))
                total = total + w.dice * parts["dice"]
            if batch.get("scribble") is not None:
                parts["pce"] = self.pce(logits, batch["scribble"])
                total = total + parts["pce"]
        else:
            parts["pce"] = self.pce(logits, batch["scribble"])
            total = parts["pce"]
        if self.uses_crf and self.method != "full":
            parts["crf"] = self._crf_term(probs, batch)
            total = total + w.crf * parts["crf"]
        if self.method == "attention":
            if not student.attention:
                raise ValueError("method 'attention' needs a network with an attention block")
            parts["attentive"] = sum(self.attentive(state, probs) for state in student.attention) / len(student.attention)
            total = total + w.attentive * parts["attentive"]
        if self.method == "distill":
            if teacher_output is None:
                raise ValueError("method 'distill' needs the teacher's output")
            ramp = rampup(self.progress, w.rampup_fraction)
            parts["distill"] = self.distillation(student, teacher_output)
            teacher_probs = torch.softmax(teacher_output.logits, dim=1)
            parts["contrastive"] = self.contrastive(student.features, teacher_probs, batch["scribble"])
            total = total + ramp * (w.distill * parts["distill"] + w.contrastive * parts["contrastive"])
        parts["total"] = total
        return parts

    def to(self, device: torch.device | str) -> Objective:
        for module in (self.pce, self.crf, self.attentive, self.distillation, self.contrastive, self.soft_ce,
                       self.soft_dice):
            module.to(device)
        return self


def build_objective(method: str, num_classes: int, weights: ObjectiveWeights | None = None) -> Objective:
    return Objective(method, num_classes, weights)
