"""Background training that gives way inside a step, between layers.

A server that trains in a thread of its own process (``learner.executors.EmbeddedExecutor``)
shares the CPU and the GIL with its interactive requests. Pausing only between optimiser
steps leaves a request that arrives mid-step competing with the rest of that step, and with
the parts of a job that are no steps at all (the reference model's prediction of the image,
the promotion gate's prediction of the validation images): on a 2-core machine rounds took
1.2x (p50) to 1.4x (p95) as long while a job ran (``docs/benchmarks.md``, "Training that
gives way between layers").

Inside ``yielding_to(pause)`` the current thread calls ``pause()`` before every
``torch.nn.Module`` forward (a process-wide forward pre-hook that does nothing in any other
thread) and, for the parameters passed to ``pause_in_backward``, whenever their gradient is
computed in that thread. ``pause`` decides whether to wait (e.g. while a round is in flight)
and for how long; it must return, never raise, for the job to go on.

The rule that keeps this free of deadlocks: the job thread holds no lock that a request may
wait for while it runs a forward or a backward pass (the registry's and the replay buffer's
locks are taken around file reads and writes only, never around a prediction), since a
paused job would hold it until its pause budget runs out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

_local = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


def yield_point() -> None:
    """Give way if the current thread runs inside ``yielding_to``; otherwise nothing."""
    pause = getattr(_local, "pause", None)
    if pause is not None:
        pause()


def _before_forward(module: torch.nn.Module, args: tuple) -> None:
    yield_point()


def _install_forward_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            torch.nn.modules.module.register_module_forward_pre_hook(_before_forward)
            _hook_installed = True


@contextmanager
def yielding_to(pause: Callable[[], None] | None) -> Iterator[None]:
    """Run the block with ``pause`` called at every module forward of this thread (None: no
    pauses in the block, even inside an outer ``yielding_to``)."""
    if pause is not None:
        _install_forward_hook()
    outer = getattr(_local, "pause", None)
    _local.pause = pause
    try:
        yield
    finally:
        _local.pause = outer


@contextmanager
def pause_in_backward(parameters: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Within the block, the thread's pause runs as each parameter's gradient is computed, so
    a backward pass gives way layer by layer too. Only in the calling thread: on CPU the
    backward runs there; on a GPU autograd computes in a device thread of its own, which
    must never wait."""
    pause = getattr(_local, "pause", None)
    if pause is None:
        yield
        return
    caller = threading.get_ident()

    def on_gradient(gradient: torch.Tensor) -> None:
        if threading.get_ident() == caller:
            pause()

    handles = [p.register_hook(on_gradient) for p in parameters if p.requires_grad]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
