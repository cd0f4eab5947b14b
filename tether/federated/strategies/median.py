"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates"): each weight is the median of the
clients' values, so fewer than half the clients, however hostile, cannot drag it outside the
range of honest values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from tether.federated.strategies.base import State, Strategy, Update, coordinatewise


class FedMedian(Strategy):
    """The coordinate-wise median of the clients' weights (with an even count, the mean of the
    two middle values)."""

    name = "median"
    needs_each_update = True

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        return coordinatewise(updates, median, self.name)


def median(stacked: torch.Tensor) -> torch.Tensor:
    """The median along dimension 0 (`torch.median` takes the lower middle instead)."""
    n = len(stacked)
    ordered = stacked.sort(dim=0).values
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2
