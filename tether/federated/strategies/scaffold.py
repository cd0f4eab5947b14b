"""SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh 2020, "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning"): each client's gradients are corrected by
`c - c_i`, the server's control variate minus its own, which cancels the drift of its local
steps towards its own data.

The control variates live at the server: `c`, and `c_i` for each client that has trained (one
tensor per floating-point state entry; a client not yet seen has `c_i = 0`, and nothing is
stored for it). After client i trains K plain-SGD steps of learning rate lr from the global x
to y_i, its variate is updated by the paper's option II, `c_i+ = c_i - c + (x - y_i) / (K lr)`,
and the server's by `c += sum(c_i+ - c_i) / N` over the round's clients, N being every client
there is (as `sample` was offered them).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tether.federated.delegated.training import TrainConfig
from tether.federated.strategies.base import (
    State,
    Strategy,
    StrategyState,
    Task,
    Update,
    average,
    check_number,
    grouped,
    mean_delta,
    moved,
    nested,
    saved_value,
)


class Scaffold(Strategy):
    """SCAFFOLD with option II's control variates; the global model steps `server_lr` times the
    clients' (samples-weighted) mean move. Clients must train with plain SGD (no momentum):
    option II reads their steps as SGD steps."""

    name = "scaffold"
    needs_each_update = True

    def __init__(self, *, server_lr: float = 1.0, **base: Any) -> None:
        super().__init__(**base)
        check_number("server_lr", server_lr, lambda v: v > 0, "> 0")
        self.server_lr = server_lr
        self.control: State | None = None  # c; None until the first round is aggregated
        self.client_controls: dict[str, State] = {}  # c_i, for clients that have trained
        self.clients = 0  # N: the most clients `sample` was offered
        self.learning_rates: dict[str, float] = {}  # each configured client's lr this round

    def sample(self, round: int, clients: Sequence[str], rng: random.Random) -> list[str]:
        self.clients = max(self.clients, len(clients))
        return super().sample(round, clients, rng)

    def configure(self, round: int, client: str, config: TrainConfig) -> Task:
        task = super().configure(round, client, config)
        self.learning_rates[client] = _sgd_lr(task.config)
        if self.control is None:
            return task  # c = c_i = 0
        own = self.client_controls.get(client)
        if own is None:
            return Task(task.config, dict(self.control))
        return Task(task.config, {key: c - own[key] for key, c in self.control.items()})

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        averaged = average(updates, self.name)
        delta = mean_delta(averaged, global_state)
        control = self.control or {key: torch.zeros_like(d) for key, d in delta.items()}
        change = {key: torch.zeros_like(c) for key, c in control.items()}
        for update in updates:
            if update.worker not in self.learning_rates:
                raise ValueError(f"scaffold: {update.worker!r} was not configured this round")
            if update.steps < 1:
                raise ValueError(f"scaffold: {update.worker!r} took no steps")
            scale = 1.0 / (update.steps * self.learning_rates.pop(update.worker))
            old = self.client_controls.get(update.worker)
            new = {}
            for key, c in control.items():
                drift = (global_state[key] - update.state[key]).mul_(scale)
                new[key] = drift.sub_(c) if old is None else drift.sub_(c).add_(old[key])
                change[key].add_(new[key] if old is None else new[key] - old[key])
            self.client_controls[update.worker] = new
        population = max(self.clients, len(updates))
        self.control = {key: c + change[key] / population for key, c in control.items()}
        steps = {key: d.mul_(self.server_lr) for key, d in delta.items()}
        return moved(global_state, steps, averaged)

    def state_dict(self) -> StrategyState:
        """c, each trained client's c_i (by its place in `controlled`) and N."""
        saved = super().state_dict()
        saved.tensors.update(nested("control", self.control))
        for i, controls in enumerate(self.client_controls.values()):
            saved.tensors.update(nested(f"client{i}", controls))
        saved.values.update(clients=self.clients, controlled=list(self.client_controls))
        return saved

    def load_state_dict(self, saved: StrategyState) -> None:
        super().load_state_dict(saved)
        groups = grouped(saved.tensors)
        names = saved_value(saved.values, "controlled", list)
        self.control = groups.get("control")
        self.client_controls = {
            str(name): groups.get(f"client{i}", {}) for i, name in enumerate(names)
        }
        self.clients = saved_value(saved.values, "clients", int)


def _sgd_lr(config: TrainConfig) -> float:
    """The learning rate of a plain-SGD config; ValueError for any other optimizer."""
    arguments = config.optimizer_args
    plain = config.optimizer.removeprefix("torch.optim.") == "SGD" and not arguments.get("momentum")
    if not plain or "lr" not in arguments:
        raise ValueError(
            "scaffold needs clients training with plain SGD and an explicit lr (its control "
            f"variates read their steps as SGD steps); got {config.optimizer} {arguments}"
        )
    return float(arguments["lr"])
