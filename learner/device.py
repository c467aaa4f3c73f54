"""Where tensors live: the one place that picks the compute device."""

from __future__ import annotations

import torch


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` ("cpu", "cuda", "cuda:1") when given, else CUDA when available, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
