"""DP-FedAvg's clipping of a client's whole update (McMahan et al. 2018): the move from the
global weights a client started from to the weights it trained, as one vector over every
floating-point entry of the state, scaled down to L2 norm at most C. A worker clips its own
(`TrainConfig.update_clip`) so that under secure aggregation, where the coordinator sees only
the sum, one client still moves that sum by at most C; the coordinator clips again what it
sees (`strategies.dpfedavg`), which changes nothing for an honest client.

Integer entries (BatchNorm's step counter) are not part of the move and are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

State = dict[str, torch.Tensor]


def move_norm(state: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of `state - start` over the floating-point entries, summed in float64."""
    total = 0.0
    for key, value in start.items():
        if value.is_floating_point():
            total += float((state[key].double() - value.double()).square().sum())
    return math.sqrt(total)


def clip_move(
    state: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], clip: float
) -> tuple[State, bool]:
    """`state` with its move from `start` scaled to norm at most `clip`, in each entry's own
    dtype; and whether the move was within `clip` already (the bit adaptive clipping counts).
    A move within `clip` is returned unchanged."""
    norm = move_norm(state, start)
    if norm <= clip:
        return dict(state), True
    scale = clip / norm
    clipped = {
        key: (
            (value.double() + (state[key].double() - value.double()) * scale).to(value.dtype)
            if value.is_floating_point()
            else state[key]
        )
        for key, value in start.items()
    }
    return clipped, False
