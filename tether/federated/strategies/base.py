"""What every aggregation strategy shares: the steps of a round, with FedAvg's behaviour.

A round has three steps a strategy may change: which clients train (`Strategy.sample`), what
each is asked to do (`Strategy.configure`: its training config, and for SCAFFOLD a gradient
correction), and how their updates become the next global model (`Strategy.aggregate`).
`Strategy` itself is FedAvg; every other strategy is one file in this package that subclasses
it (or FedAvg's subclass) and overrides only the step it changes. The coordinator
(`tether train`) and the simulation engine drive the same strategies the same way:

    for each round r = 1, 2, ...:
        chosen = strategy.sample(r, clients, rng)
        for client in chosen: task = strategy.configure(r, client, config); train as task says
        state = strategy.aggregate(r, [Update(client, weights, samples, steps), ...], state)

A strategy may keep state between rounds (server momentum, SCAFFOLD's control variates), so
a driver uses one strategy object for one run, trains each client with the `Task` that
`configure` gave it (SCAFFOLD remembers its learning rate), reports the client's local
optimizer steps in `Update.steps`, and offers `sample` every client there is (SCAFFOLD takes
their number as its N). That state goes into the run's checkpoint through `state_dict()` /
`load_state_dict()` (a `StrategyState`: tensors for safetensors, numbers and names for JSON),
which a subclass extends only where it keeps state, so a resumed run continues exactly as an
uninterrupted one. The parameters every strategy takes, and each strategy's own, are
documented once, in `registry.PARAMETERS`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

from tether.federated.delegated.training import TrainConfig

State = dict[str, torch.Tensor]
T = TypeVar("T")


@dataclass(frozen=True)
class Update:
    """One client's answer to a round: its weights, how many samples produced them and how
    many local optimizer steps it took (FedNova and SCAFFOLD normalise by it); for DP-FedAvg,
    whether its move was within the clipping norm before it clipped it (`within_clip`)."""

    worker: str
    state: Mapping[str, torch.Tensor]
    samples: int
    steps: int = 1
    within_clip: bool | None = None


@dataclass(frozen=True)
class Sum:
    """All that secure aggregation reveals of a round: the sum over the clients of
    `weight * (their weights - the global weights)`, entry by entry (integer entries such as
    BatchNorm's counter as float64), and the sum of the weights. A client's weight is its
    sample count, or 1 where the strategy weighs clients equally (`weigh_by_samples`).
    `within_clip`: how many clients' moves were within DP-FedAvg's clipping norm (adaptive
    clipping's count; None where the clients did not say)."""

    delta: State
    weight: float
    clients: int
    within_clip: float | None = None


@dataclass(frozen=True)
class Task:
    """What one client is asked to do in a round: the training config it runs and, for
    SCAFFOLD, the correction added to its gradients (a tensor per floating-point entry of
    the model's state; `train` uses those of the trained parameters)."""

    config: TrainConfig
    correction: State | None = None


#: The numbers and names a strategy keeps between rounds (JSON in a checkpoint).
Values = dict[str, float | int | list[str]]


@dataclass
class StrategyState:
    """What a strategy carries from one round to the next: its tensors, by name (saved as
    safetensors, never pickled) and its numbers and names (saved as JSON). Empty for a
    strategy that keeps nothing."""

    tensors: State = field(default_factory=dict)
    values: Values = field(default_factory=dict)


class Strategy:
    """FedAvg (McMahan et al. 2017) with client sampling and a learning-rate schedule; the base
    of every strategy.

    `fraction` of the available clients train each round, at least `min_clients` (all of
    them by default), drawn with the round's own generator so a run repeats exactly. The
    clients' learning rate in round r is the config's times `lr_schedule(r)`, by default
    `lr_decay ** (r - 1)`."""

    name = "fedavg"
    #: Whether a client's move counts by its sample count (FedAvg) or once (DP-FedAvg, whose
    #: noise is calibrated to one client's clipped move).
    weigh_by_samples = True
    #: Whether `aggregate` needs each client's update; such a strategy (median, Krum) cannot
    #: run under secure aggregation, which shows the coordinator only their `Sum`.
    needs_each_update = False

    def __init__(
        self,
        *,
        fraction: float = 1.0,
        min_clients: int = 1,
        lr_decay: float = 1.0,
        lr_schedule: Callable[[int], float] | None = None,
    ) -> None:
        check_number("fraction", fraction, lambda v: 0 < v <= 1, "in (0, 1]")
        if type(min_clients) is not int or min_clients < 1:
            raise ValueError(f"min_clients must be a positive integer, got {min_clients!r}")
        check_number("lr_decay", lr_decay, lambda v: 0 < v <= 1, "in (0, 1]")
        if lr_schedule is not None and lr_decay != 1:
            raise ValueError("give lr_decay or lr_schedule, not both")
        self.fraction, self.min_clients, self.lr_decay = fraction, min_clients, lr_decay
        self.lr_schedule = lr_schedule if lr_schedule is not None else self._decay

    def _decay(self, round: int) -> float:
        return self.lr_decay ** (round - 1)

    def sample(self, round: int, clients: Sequence[str], rng: random.Random) -> list[str]:
        """The clients that train this round, in the order given."""
        wanted = max(self.min_clients, math.ceil(self.fraction * len(clients)))
        if wanted >= len(clients):
            return list(clients)
        chosen = set(rng.sample(range(len(clients)), wanted))
        return [client for i, client in enumerate(clients) if i in chosen]

    def configure(self, round: int, client: str, config: TrainConfig) -> Task:
        """What `client` runs this round: the federation's config at this round's learning
        rate. Subclasses that change the task start from this one."""
        factor = self.lr_schedule(round)
        if factor == 1:
            return Task(config)
        if not (isinstance(factor, int | float) and 0 < factor < math.inf):
            raise ValueError(f"lr_schedule({round}) must be a positive number, got {factor!r}")
        arguments = config.optimizer_args
        if "lr" not in arguments:
            raise ValueError(
                "a learning-rate schedule scales the config's lr: set lr in optimizer_args"
            )
        scaled = {**arguments, "lr": arguments["lr"] * factor}
        return Task(replace(config, optimizer_args=scaled))

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        """The next global weights: the server's step to the samples-weighted average of
        the clients' weights."""
        return self.server_step(average(updates, self.name), global_state)

    def record(self) -> dict[str, Any]:
        """What this strategy adds to the record of the round it aggregated last (DP-FedAvg:
        the ε spent so far); plain data, for the coordinator's and the simulation's history."""
        return {}

    def aggregate_sum(
        self, round: int, total: Sum, global_state: Mapping[str, torch.Tensor]
    ) -> State:
        """The next global weights from the round's `Sum` alone (secure aggregation): the
        server's step to the global weights moved by the clients' weighted mean move."""
        if total.weight <= 0:
            raise ValueError(f"{self.name} needs a positive total weight, got {total.weight}")
        averaged = {
            key: shifted(value, total.delta[key] / total.weight)
            for key, value in global_state.items()
        }
        return self.server_step(averaged, global_state)

    def server_step(self, averaged: State, global_state: Mapping[str, torch.Tensor]) -> State:
        """The next global weights from the clients' mean weights, however they were
        aggregated: those weights (FedAvg); a server optimizer (FedAvgM, FedOpt) steps along
        the move from `global_state` to them instead."""
        return averaged

    def state_dict(self) -> StrategyState:
        """What this strategy keeps between rounds, for a checkpoint. FedAvg keeps nothing:
        its sampling and learning-rate schedule are functions of the round's number. A
        subclass with state adds to its parent's."""
        return StrategyState()

    def load_state_dict(self, saved: StrategyState) -> None:
        """Take up the state that `state_dict()` gave (read back from a checkpoint); a
        subclass with state reads its own entries (KeyError where one is missing)."""


def nested(prefix: str, tensors: Mapping[str, torch.Tensor] | None) -> State:
    """`tensors` named `prefix.key`, so several share one `StrategyState.tensors` (`prefix`
    has no dot; None gives none)."""
    return {f"{prefix}.{key}": value for key, value in (tensors or {}).items()}


def grouped(tensors: Mapping[str, torch.Tensor]) -> dict[str, State]:
    """The tensors that `nested` named, by prefix and then by their own keys."""
    groups: dict[str, State] = {}
    for name, value in tensors.items():
        prefix, _, key = name.partition(".")
        groups.setdefault(prefix, {})[key] = value
    return groups


def saved_value(values: Values, key: str, kind: type[T]) -> T:
    """`values[key]`, which must be a `kind` (an int will do for a float); KeyError or
    TypeError naming it otherwise."""
    value = values[key]
    if kind is float and type(value) is int:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"the saved {key} must be {kind.__name__}, got {value!r}")
    return value


def shifted(value: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """`value + move` in `value`'s dtype (an integer entry rounded)."""
    if value.is_floating_point():
        return value + move.to(value.dtype)
    return (value.double() + move).round_().to(value.dtype)


def summed(
    updates: Sequence[Update], global_state: Mapping[str, torch.Tensor], by_samples: bool
) -> Sum:
    """The `Sum` that secure aggregation would reveal of these updates (the reference the
    secure path is tested against, and the way a sum-based strategy runs without it)."""
    if not updates:
        raise ValueError("a sum needs at least one update")
    weights = [float(u.samples) if by_samples else 1.0 for u in updates]
    delta = {
        key: sum(
            (
                w * (u.state[key].double() - value.double())
                for u, w in zip(updates, weights, strict=True)
            ),
            torch.zeros(value.shape, dtype=torch.float64),
        )
        for key, value in global_state.items()
    }
    said = all(u.within_clip is not None for u in updates)
    within = float(sum(1 for u in updates if u.within_clip)) if said else None
    return Sum(delta, sum(weights), len(updates), within)


def check_number(name: str, value: Any, fits: Callable[[float], bool], what: str) -> None:
    """A strategy's numeric parameter, checked: ValueError `name must be what, got value`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not fits(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def average(updates: Sequence[Update], who: str) -> State:
    """The samples-weighted average of the updates' weights (FedAvg's)."""
    if not updates:
        raise ValueError(f"{who} needs at least one update")
    return weighted_average([u.state for u in updates], [u.samples for u in updates])


def mean_delta(
    average: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]
) -> State:
    """How far the clients moved the model on average, `average - global_state`, for the
    floating-point tensors (Reddi et al.'s pseudo-gradient, with the sign of a step)."""
    return {
        key: value - global_state[key]
        for key, value in average.items()
        if value.is_floating_point()
    }


def moved(
    global_state: Mapping[str, torch.Tensor], steps: Mapping[str, torch.Tensor], fallback: State
) -> State:
    """`global_state + steps` for the tensors a server optimizer steps (the floating-point
    ones); `fallback`'s value (the clients' average) for the rest, such as BatchNorm's
    counters."""
    return {
        key: global_state[key] + steps[key] if key in steps else value
        for key, value in fallback.items()
    }


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
    keys = same_keys(states)
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


def same_keys(states: Sequence[Mapping[str, torch.Tensor]]) -> Iterable[str]:
    """The keys every state has; ValueError naming those that differ."""
    keys = states[0].keys()
    for i, state in enumerate(states[1:], 1):
        if state.keys() != keys:
            raise ValueError(
                f"state {i} has keys {sorted(set(state) ^ set(keys))} that state 0 "
                "lacks or has: all workers must train the same model"
            )
    return keys


def coordinatewise(
    updates: Sequence[Update], reduce: Callable[[torch.Tensor], torch.Tensor], who: str
) -> State:
    """Each state entry reduced across the clients coordinate by coordinate: `reduce` takes
    the clients' values stacked along dimension 0 and removes it. The robust aggregators use
    it; they ignore the sample counts, which a hostile client could inflate. Integer entries
    are reduced in float64 and rounded."""
    if not updates:
        raise ValueError(f"{who} needs at least one update")
    states = [u.state for u in updates]
    result: State = {}
    for key in same_keys(states):
        first = states[0][key]
        exact = first.is_floating_point()
        stacked = torch.stack([s[key] if exact else s[key].double() for s in states])
        reduced = reduce(stacked)
        result[key] = reduced if exact else reduced.round_().to(first.dtype)
    return result
