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

import copy
from collections.abc import Sequence

import torch


def average_weights(models: Sequence[torch.nn.Module]) -> torch.nn.Module:
    """A new model: a copy of ``models[-1]`` holding the mean of the models' floating-point
    parameters and buffers (see the module docstring); the inputs are left unchanged.

    Raises ValueError for no models, or for models whose state dicts differ in names or shapes.
    """
    if not models:
        raise ValueError("average_weights needs at least one model")
    states = [m.state_dict() for m in models]
    newest = states[-1]
    for position, state in enumerate(states[:-1]):
        mismatched = sorted(set(state) ^ set(newest)) or [
            name for name in newest if state[name].shape != newest[name].shape
        ]
        if mismatched:
            raise ValueError(f"model {position} does not match the newest model: {mismatched[:3]} differ")
    averaged = {}
    for name, tensor in newest.items():
        if tensor.is_floating_point():
            stacked = torch.stack([s[name].detach().to(device=tensor.device, dtype=torch.float64) for s in states])
            averaged[name] = stacked.mean(dim=0).to(tensor.dtype)
        else:
            averaged[name] = tensor.detach().clone()
    result = copy.deepcopy(models[-1])
    result.load_state_dict(averaged)
    return result
