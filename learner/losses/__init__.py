"""Scribble-supervision losses, one module per loss; see each class docstring for the formula."""

from learner.losses.attentive import AttentiveSimilarityLoss
from learner.losses.contrastive import ClassContrastiveLoss
from learner.losses.crf import MaskedGatedCRFLoss
from learner.losses.distill import EMATeacher, MultiScaleDistillationLoss
from learner.losses.pce import PartialCrossEntropyLoss
from learner.losses.soft_ce import SoftTargetCrossEntropyLoss
from learner.losses.soft_dice import SoftDiceLoss

__all__ = [
    "AttentiveSimilarityLoss",
    "ClassContrastiveLoss",
    "EMATeacher",
    "MaskedGatedCRFLoss",
    "MultiScaleDistillationLoss",
    "PartialCrossEntropyLoss",
    "SoftDiceLoss",
    "SoftTargetCrossEntropyLoss",
]
