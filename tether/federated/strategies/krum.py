"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent"). Each client is scored by the sum of
squared distances from its weights to its `n - f - 2` nearest neighbours', f being the number
of Byzantine clients tolerated; hostile updates far from the honest cluster score high. Krum
takes the best-scored client's weights; Multi-Krum averages the `selected` best."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tether.federated.strategies.base import State, Strategy, Update, same_keys, weighted_average


class Krum(Strategy):
    """The mean of the `selected` best-scored clients' weights (None: all but `byzantine`),
    tolerating `byzantine` hostile clients; needs more than `2 * byzantine + 2` clients a
    round. `selected=1` is Krum."""

    name = "krum"
    needs_each_update = True

    def __init__(self, *, byzantine: int = 1, selected: int | None = 1, **base: Any) -> None:
        super().__init__(**base)
        if type(byzantine) is not int or byzantine < 0:
            raise ValueError(f"byzantine must be an integer >= 0, got {byzantine!r}")
        if selected is not None and (type(selected) is not int or selected < 1):
            raise ValueError(f"selected must be a positive integer, got {selected!r}")
        self.byzantine, self.selected = byzantine, selected

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        n = len(updates)
        selected = self.selected if self.selected is not None else n - self.byzantine
        if n <= 2 * self.byzantine + 2 or selected > n:
            raise ValueError(
                f"{self.name} with byzantine={self.byzantine} and selected={selected} needs "
                f"more than {2 * self.byzantine + 2} clients a round, and at least {selected}; "
                f"this round has {n}"
            )
        chosen = [updates[i].state for i in self.best(updates)[:selected]]
        return weighted_average(chosen, [1] * len(chosen))

    def best(self, updates: Sequence[Update]) -> list[int]:
        """The clients' indices by Krum score, lowest (most central) first."""
        states = [u.state for u in updates]
        keys = [k for k in same_keys(states) if states[0][k].is_floating_point()]
        flat = torch.stack([torch.cat([s[k].flatten().double() for k in keys]) for s in states])
        distances = torch.cdist(flat, flat).square()
        neighbours = len(updates) - self.byzantine - 2
        # each row's smallest distances, past its zero distance to itself
        scores = distances.sort(dim=1).values[:, 1 : neighbours + 1].sum(dim=1)
        return scores.argsort(stable=True).tolist()


class MultiKrum(Krum):
    """Multi-Krum: Krum that by default averages all but `byzantine` clients."""

    name = "multikrum"

    def __init__(self, *, byzantine: int = 1, selected: int | None = None, **base: Any) -> None:
        super().__init__(byzantine=byzantine, selected=selected, **base)
