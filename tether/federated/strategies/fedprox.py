"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith 2020, "Federated Optimization in
Heterogeneous Networks"): FedAvg whose clients add a proximal term `mu/2 * |w - w_global|^2` to
their loss, which keeps their models near the global one on heterogeneous data."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tether.federated.delegated.training import TrainConfig
from tether.federated.strategies.base import Strategy, Task, check_number


class FedProx(Strategy):
    """FedAvg whose clients train with the proximal term of weight `mu` (`fit` adds its
    gradient, `mu * (w - w_global)`, to each step's)."""

    name = "fedprox"

    def __init__(self, *, mu: float = 0.01, **base: Any) -> None:
        super().__init__(**base)
        check_number("mu", mu, lambda v: 0 <= v < 1e6, ">= 0")
        self.mu = mu

    def configure(self, round: int, client: str, config: TrainConfig) -> Task:
        task = super().configure(round, client, config)
        return replace(task, config=replace(task.config, proximal_mu=float(self.mu)))
