"""FedOpt (Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan 2021, "Adaptive
Federated Optimization"): the server treats the clients' mean move `delta` (the
pseudo-gradient, with a step's sign) as a gradient for an adaptive optimizer:

    m = beta1 * m + (1 - beta1) * delta
    v = second_moment(v, delta ** 2)          # FedAdagrad, FedAdam and FedYogi differ here only
    x = x + server_lr * m / (sqrt(v) + tau)

with `m` starting at 0 and `v` at `tau ** 2` (the paper's `v_{-1} >= tau^2`), and no bias
correction, as in the paper. The clients' learning rate (the paper's eta_l) is the config's.
"""

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


class FedOpt(Strategy):
    """What FedAdagrad, FedAdam and FedYogi share; each defines `second_moment`."""

    def __init__(
        self,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        check_number("server_lr", server_lr, lambda v: v > 0, "> 0")
        check_number("beta1", beta1, lambda v: 0 <= v < 1, "in [0, 1)")
        check_number("beta2", beta2, lambda v: 0 <= v < 1, "in [0, 1)")
        check_number("tau", tau, lambda v: v > 0, "> 0")
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: State | None = None
        self.v: State | None = None

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """The new `v` from the old and `delta ** 2` (in place on `v`)."""
        raise NotImplementedError

    def server_step(self, averaged: State, global_state: Mapping[str, torch.Tensor]) -> State:
        """The adaptive step along the move from `global_state` to the clients' mean."""
        delta = mean_delta(averaged, global_state)
        if self.m is None or self.v is None:
            self.m = {key: torch.zeros_like(d) for key, d in delta.items()}
            self.v = {key: torch.full_like(d, self.tau**2) for key, d in delta.items()}
        steps = {}
        for key, d in delta.items():
            m = self.m[key].mul_(self.beta1).add_(d, alpha=1 - self.beta1)
            v = self.second_moment(self.v[key], d.square())
            steps[key] = m / (v.sqrt() + self.tau) * self.server_lr
        return moved(global_state, steps, averaged)

    def state_dict(self) -> StrategyState:
        saved = super().state_dict()
        saved.tensors.update({**nested("m", self.m), **nested("v", self.v)})
        return saved

    def load_state_dict(self, saved: StrategyState) -> None:
        super().load_state_dict(saved)
        groups = grouped(saved.tensors)
        self.m, self.v = groups.get("m"), groups.get("v")
        if (self.m is None) != (self.v is None):
            raise KeyError(f"{self.name}'s saved state has one of its moments and not the other")
