"""What every aggregation strategy shares: the steps of a round, with FedAvg's behaviour.

A round has three steps a strategy may change: which clients train (`Strategy.sample`), what
each is asked to do (`Strategy.configure`: its training config, and for SCAFFOLD a gradient
correction), and how their updates become the next global model (`Strategy.aggregate`).
`Strategy` itself is FedAvg; every other strategy is one file in this package that subclasses
it (or FedAvg's subclass) and overrides only the step it changes. The coordinator
(`tether train`) and the simulation engine drive the same strategies the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from tether.federated.delegated.training import TrainConfig

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Update:
    """One client's answer to a round: its weights, how many samples produced them and how
    many local optimizer steps it took (FedNova and SCAFFOLD normalise by it)."""

    worker: str
    state: Mapping[str, torch.Tensor]
    samples: int
    steps: int = 1


@dataclass(frozen=True)
class Task:
    """What one client is asked to do in a round: the training config it runs and, for
    SCAFFOLD, the correction (one tensor per trained parameter) added to its gradients."""

    config: TrainConfig
    correction: State | None = None


class Strategy:
    """FedAvg (McMahan et al. 2017) with client sampling; the base of every strategy.

    `fraction` of the available clients train each round, at least `min_clients` (all of
    them by default), drawn with the round's own generator so a run repeats exactly."""

    name = "fedavg"

    def __init__(self, *, fraction: float = 1.0, min_clients: int = 1) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if type(min_clients) is not int or min_clients < 1:
            raise ValueError(f"min_clients must be a positive integer, got {min_clients!r}")
        self.fraction, self.min_clients = fraction, min_clients

    def sample(self, round: int, clients: Sequence[str], rng: random.Random) -> list[str]:
        """The clients that train this round, in the order given."""
        wanted = max(self.min_clients, math.ceil(self.fraction * len(clients)))
        if wanted >= len(clients):
            return list(clients)
        chosen = set(rng.sample(range(len(clients)), wanted))
        return [client for i, client in enumerate(clients) if i in chosen]

    def configure(self, round: int, client: str, config: TrainConfig) -> Task:
        """What `client` runs this round: the federation's config, unchanged."""
        return Task(config)

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        """The next global weights: the samples-weighted average of the clients'."""
        if not updates:
            raise ValueError(f"{self.name} needs at least one update")
        return weighted_average([u.state for u in updates], [u.samples for u in updates])


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
