"""What every aggregation strategy shares: a strategy is a pure function from the round's
updates to the next global weights.

Each strategy has the shape `(updates, global_state) -> new_state`, so the coordinator can take
any of them and others (FedProx's server side, trimmed mean, FedAdam) can follow, one file
each in this package, without touching transport or scheduling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Update:
    """One worker's answer to a round: its weights and how many samples produced them."""

    worker: str
    state: Mapping[str, torch.Tensor]
    samples: int


Strategy = Callable[[Sequence[Update], Mapping[str, torch.Tensor]], State]


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> State:
    """The weighted mean of state dicts, key by key, in each tensor's own dtype (one pass, one
    new tensor per key: this runs every round). Integer tensors (BatchNorm's step counter)
    are averaged in float64 and rounded."""
    if not states or len(states) != len(weights):
        raise ValueError(
            f"need one weight per state, got {len(states)} states and {len(weights)} weights"
        )
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    keys = states[0].keys()
    for i, state in enumerate(states[1:], 1):
        if state.keys() != keys:
            raise ValueError(
                f"state {i} has keys {sorted(set(state) ^ set(keys))} that state 0 "
                "lacks or has: all workers must train the same model"
            )
    averaged: State = {}
    shares = [w / total for w in weights]
    for key in keys:
        first = states[0][key]
        exact = first.is_floating_point()
        acc = first.mul(shares[0]) if exact else first.double().mul_(shares[0])
        for state, share in zip(states[1:], shares[1:], strict=True):
            acc.add_(state[key], alpha=share)
        averaged[key] = acc if exact else acc.round_().to(first.dtype)
    return averaged
