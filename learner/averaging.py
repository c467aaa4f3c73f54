"""Weight averaging of model versions: the served model as the mean of the last fine-tuned ones.

Each online job pulls the network towards its own image, so consecutive versions of one
line of fine-tuning scatter around what the stream has taught (ACDC, 30 volumes: holdout
Dice 0.03-0.07 apart from one promoted version to the next). The mean of the last few
versions' weights lies nearer the centre of that scatter than any one of them
(``docs/benchmarks.md``, "The serving version swings"); training goes on from the newest
version, not from the mean, so averaging smooths what is served without slowing learning.

For versions ``w_1 .. w_K`` of one architecture, every floating-point tensor of the state
dict (weights, biases and batch-norm running statistics alike) becomes ``(1/K) Σ_k w_k``;
integer buffers (batch-norm's ``num_batches_tracked``) are the newest version's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def average_state_dicts(states: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean state dict of ``states`` (see the module docstring), summed one at a time in
    float64, so only one input needs to be in memory; integer tensors are the last one's.

    Raises ValueError for no state dicts, or for state dicts that differ in names or shapes.
    """
    total: dict[str, torch.Tensor] | None = None
    newest: dict[str, torch.Tensor] = {}
    count = 0
    for position, state in enumerate(states):
        if total is None:
            total = {name: t.detach().to(torch.float64, copy=True) for name, t in state.items() if t.is_floating_point()}
            names, shapes = set(state), {name: t.shape for name, t in state.items()}
        else:
            mismatched = sorted(names ^ set(state)) or [n for n in names if state[n].shape != shapes[n]]
            if mismatched:
                raise ValueError(f"model {position} does not match the first model: {mismatched[:3]} differ")
            for name in total:
                total[name] += state[name].detach().to(total[name].device, torch.float64)
        newest = state
        count += 1
    if total is None:
        raise ValueError("averaging needs at least one model")
    return {name: (total[name] / count).to(t.dtype) if name in total else t.detach().clone()
            for name, t in newest.items()}

