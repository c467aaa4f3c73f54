"""Where tensors live and at which precision they are computed: the one place that picks the
compute device and the mixed-precision policy."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` ("cpu", "cuda", "cuda:1") when given, else CUDA when available, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (CUDA with bf16, or a CPU whose
    oneDNN has bf16 kernels, e.g. AVX512-BF16 / AMX); elsewhere bf16 would be emulated and slow."""
    if device.type == "cuda":
        # compute capability 8.0 (Ampere) on has bf16 tensor cores; older cards only emulate it
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        # oneDNN's own check passes on any AVX-512 CPU (emulated bf16); ask for the instructions
        checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        if checker is None or not checker():
            return False
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def _cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, for benchmark reports (what ``platform`` says elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``auto`` -> ``bf16`` where :func:`bf16_supported`, else ``fp32``; ``bf16`` on a device
    without support is refused rather than silently emulated."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        raise ValueError(f"bf16 is not supported natively on {device}")
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for forward passes: bf16 autocast (weights and optimiser stay
    fp32; losses that autocast keeps in fp32 stay there) or a no-op for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
