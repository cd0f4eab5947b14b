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
    return _norm(_move(state, start))


def clipped_move(
    state: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], clip: float
) -> tuple[State, bool]:
    """`state - start` for the floating-point entries, in float64, scaled to norm at most
    `clip`; and whether it was within `clip` already (the bit adaptive clipping counts)."""
    move = _move(state, start)
    norm = _norm(move)
    if norm > clip:
        for value in move.values():
            value.mul_(clip / norm)
    return move, norm <= clip


def clip_move(
    state: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], clip: float
) -> tuple[State, bool]:
    """`state` with its move from `start` scaled to norm at most `clip`, in each entry's own
    dtype, and whether the move was within `clip` already. A move within it is not touched."""
    move, within = clipped_move(state, start, clip)
    if within:
        return dict(state), True
    return {
        key: (start[key].double() + move[key]).to(value.dtype) if key in move else value
        for key, value in state.items()
    }, False


def _move(state: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor]) -> State:
    return {
        key: state[key].double().sub_(value)
        for key, value in start.items()
        if value.is_floating_point()
    }


def _norm(move: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(value.square().sum()) for value in move.values()))
