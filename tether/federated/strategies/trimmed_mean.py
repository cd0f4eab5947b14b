"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates"): for each weight, the largest and
the smallest `beta` fraction of the clients' values are dropped and the rest averaged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tether.federated.strategies.base import (
    State,
    Strategy,
    Update,
    check_number,
    coordinatewise,
)


class TrimmedMean(Strategy):
    """The coordinate-wise mean after dropping `floor(beta * n)` values at each end."""

    name = "trimmed_mean"
    needs_each_update = True

    def __init__(self, *, beta: float = 0.1, **base: Any) -> None:
        super().__init__(**base)
        check_number("beta", beta, lambda v: 0 <= v < 0.5, "in [0, 0.5)")
        self.beta = beta

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        cut = int(self.beta * len(updates))

        def trimmed(stacked: torch.Tensor) -> torch.Tensor:
            return stacked.sort(dim=0).values[cut : len(stacked) - cut].mean(dim=0)

        return coordinatewise(updates, trimmed, self.name)
