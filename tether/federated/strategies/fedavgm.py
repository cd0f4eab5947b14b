"""FedAvgM (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification"): FedAvg whose server steps with momentum along the clients'
mean move."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tether.federated.strategies.base import (
    State,
    Strategy,
    StrategyState,
    check_number,
    grouped,
    mean_delta,
    moved,
    nested,
)


class FedAvgM(Strategy):
    """FedAvg with server momentum: `v = server_momentum * v + delta`, `x = x + server_lr * v`,
    `delta` being the clients' weighted mean move. `server_momentum=0, server_lr=1` is FedAvg."""

    name = "fedavgm"

    def __init__(
        self, *, server_lr: float = 1.0, server_momentum: float = 0.9, **base: Any
    ) -> None:
        super().__init__(**base)
        check_number("server_lr", server_lr, lambda v: v > 0, "> 0")
        check_number("server_momentum", server_momentum, lambda v: 0 <= v < 1, "in [0, 1)")
        self.server_lr, self.server_momentum = server_lr, server_momentum
        self.velocity: State | None = None

    def server_step(self, averaged: State, global_state: Mapping[str, torch.Tensor]) -> State:
        """The momentum step along the move from `global_state` to the clients' mean."""
        delta = mean_delta(averaged, global_state)
        if self.velocity is None:
            self.velocity = delta
        else:
            for key, v in self.velocity.items():
                v.mul_(self.server_momentum).add_(delta[key])
        steps = {key: v * self.server_lr for key, v in self.velocity.items()}
        return moved(global_state, steps, averaged)

    def state_dict(self) -> StrategyState:
        saved = super().state_dict()
        saved.tensors.update(nested("velocity", self.velocity))
        return saved

    def load_state_dict(self, saved: StrategyState) -> None:
        super().load_state_dict(saved)
        self.velocity = grouped(saved.tensors).get("velocity")
