"""FedAvg (McMahan et al. 2017): the samples-weighted average of the workers' weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from tether.federated.strategies.base import State, Update, weighted_average


def fedavg(updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]) -> State:
    """FedAvg (McMahan et al. 2017): the average of the workers' weights, each weighted by the
    samples it trained on. `global_state` is unused; it is part of every strategy's shape."""
    if not updates:
        raise ValueError("FedAvg needs at least one update")
    return weighted_average([u.state for u in updates], [u.samples for u in updates])
