"""EMA teacher and multi-scale prediction distillation (ScribSD+)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from learner.networks import SegmentationOutput


class EMATeacher:
    """A frozen copy of the student whose weights follow an exponential moving average.

    After update number t: theta_T <- alpha theta_T + (1 - alpha) theta_S,
    alpha = min(decay, 1 - 1/(t + 1)) (the mean-teacher warm-up, so early teachers are not
    stuck on the random initialisation). Floating-point buffers (BatchNorm running
    statistics) follow the same average, integer buffers are copied.
    ``teacher(x)`` runs the copy in eval mode without gradients -> :class:`SegmentationOutput`.
    Not an ``nn.Module`` on purpose: its parameters never reach the student's optimiser.
    """

    def __init__(self, student: nn.Module, decay: float = 0.99) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError("decay must be in [0, 1]")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(student)
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        self.updates += 1
        alpha = min(self.decay, 1.0 - 1.0 / (self.updates + 1))
        for teacher_p, student_p in zip(self.model.parameters(), student.parameters(), strict=True):
            teacher_p.mul_(alpha).add_(student_p.detach(), alpha=1.0 - alpha)
        for teacher_b, student_b in zip(self.model.buffers(), student.buffers(), strict=True):
            if teacher_b.is_floating_point():
                teacher_b.mul_(alpha).add_(student_b.detach(), alpha=1.0 - alpha)
            else:
                teacher_b.copy_(student_b)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> SegmentationOutput:
        self.model.eval()
        return self.model(x)

    def to(self, device: torch.device | str) -> EMATeacher:
        self.model.to(device)
        return self

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])


def _teacher_probs_at(
    teacher: SegmentationOutput, index: int, size: torch.Size, temperature: float
) -> torch.Tensor:
    """Teacher soft prediction for student scale ``index`` (0 = final, k = aux_logits[k-1]):
    the teacher's own output at that scale when it has one of that size, else its final
    probabilities area-averaged to ``size``."""
    candidates = [teacher.logits, *teacher.aux_logits]
    if index < len(candidates) and candidates[index].shape[-2:] == size:
        return torch.softmax(candidates[index].detach() / temperature, dim=1)
    final = torch.softmax(teacher.logits.detach() / temperature, dim=1)
    return F.interpolate(final, size=tuple(size), mode="area")


class MultiScaleDistillationLoss(nn.Module):
    """L = (1 / S) * sum_s T^2 * mean_{b,pixels} KL(t_s || q_s),
    t_s = softmax(teacher_s / T), q_s = softmax(student_s / T),
    over the S = 1 + len(student.aux_logits) student scales (final logits and every auxiliary
    decoder output, finest first); teacher_s is the teacher's output at the same scale (its
    final prediction area-averaged when it has none of that size).

    forward(student: SegmentationOutput, teacher: SegmentationOutput) -> scalar >= 0 (0 when
    the predictions agree). Teacher outputs are detached; gradients reach the student only.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature

    def forward(self, student: SegmentationOutput, teacher: SegmentationOutput) -> torch.Tensor:
        scales = [student.logits, *student.aux_logits]
        total = student.logits.new_zeros(())
        for index, logits in enumerate(scales):
            target = _teacher_probs_at(teacher, index, logits.shape[-2:], self.temperature)
            log_q = torch.log_softmax(logits / self.temperature, dim=1)
            kl = torch.special.xlogy(target, target) - target * log_q  # (B, C, h, w)
            total = total + kl.sum(dim=1).mean()
        return total * (self.temperature**2) / len(scales)
