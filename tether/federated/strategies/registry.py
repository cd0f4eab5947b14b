"""Strategies by name, with typed keyword parameters: what `tether train --strategy NAME` and
a federation file's `[strategy]` table choose from. Each parameter's meaning is written once,
here, in `PARAMETERS`; a strategy takes its own and those of `Strategy` (sampling and the
learning-rate schedule)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.federated.strategies.base import Strategy
from tether.federated.strategies.dpfedavg import DPFedAvg
from tether.federated.strategies.fedadagrad import FedAdagrad
from tether.federated.strategies.fedadam import FedAdam
from tether.federated.strategies.fedavg import FedAvg
from tether.federated.strategies.fedavgm import FedAvgM
from tether.federated.strategies.fednova import FedNova
from tether.federated.strategies.fedprox import FedProx
from tether.federated.strategies.fedyogi import FedYogi
from tether.federated.strategies.krum import Krum, MultiKrum
from tether.federated.strategies.median import FedMedian
from tether.federated.strategies.scaffold import Scaffold
from tether.federated.strategies.trimmed_mean import TrimmedMean


@dataclass(frozen=True)
class Parameter:
    """A strategy parameter as a user gives it: its type (int or float) and what it means."""

    kind: type
    help: str


PARAMETERS: dict[str, Parameter] = {
    "fraction": Parameter(float, "fraction of the available clients that train each round"),
    "min_clients": Parameter(int, "fewest clients that train each round, if there are as many"),
    "lr_decay": Parameter(float, "factor on the clients' learning rate per round"),
    "mu": Parameter(float, "FedProx's proximal weight: pulls local models to the global"),
    "server_lr": Parameter(float, "the server's step size on the clients' mean move"),
    "server_momentum": Parameter(float, "FedAvgM's momentum of the server's steps"),
    "beta1": Parameter(float, "FedOpt's decay of the pseudo-gradient's moving average"),
    "beta2": Parameter(float, "FedAdam's and FedYogi's decay of its squares' average"),
    "tau": Parameter(float, "FedOpt's adaptivity: added to the root of the squares' average"),
    "beta": Parameter(float, "trimmed mean: fraction of values dropped at each end"),
    "byzantine": Parameter(int, "Krum: hostile clients tolerated"),
    "selected": Parameter(int, "Krum: best-scored clients averaged (multikrum: n - byzantine)"),
    "clip_norm": Parameter(float, "DP-FedAvg's C: each client's move is clipped to this L2 norm"),
    "noise_multiplier": Parameter(
        float, "DP-FedAvg's z: Gaussian noise of std z*C on the clipped moves' sum"
    ),
    "delta": Parameter(float, "DP-FedAvg's δ, at which its ε is reported (default 1e-5)"),
    "target_quantile": Parameter(
        float, "DP-FedAvg's adaptive clipping: the quantile of update norms C moves towards"
    ),
    "clip_lr": Parameter(float, "DP-FedAvg's adaptive clipping: C's geometric step (default 0.2)"),
    "quantile_noise": Parameter(
        float, "DP-FedAvg's adaptive clipping: noise std on the count of clients within C"
    ),
}

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedProx,
        Scaffold,
        FedAdagrad,
        FedAdam,
        FedYogi,
        FedNova,
        FedMedian,
        TrimmedMean,
        Krum,
        MultiKrum,
        DPFedAvg,
    )
}


def parameters(name: str) -> list[str]:
    """The parameters strategy `name` takes, sorted; ValueError for an unknown name."""
    cls = strategy_class(name)
    own = inspect.signature(cls.__init__).parameters.values()
    base = inspect.signature(Strategy.__init__).parameters.values()
    return sorted(p.name for p in (*own, *base) if p.name in PARAMETERS)


def strategy_class(name: str) -> type[Strategy]:
    """The strategy called `name`; ValueError listing the known names."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def make_strategy(name: str, arguments: Mapping[str, Any] | None = None) -> Strategy:
    """`make_strategy("fedprox", {"mu": 0.01})`: the strategy, its arguments checked by name
    and type (an int is a float too); ValueError saying what the strategy takes otherwise."""
    arguments = dict(arguments or {})
    accepted = parameters(name)
    for key, value in arguments.items():
        if key not in accepted:
            raise ValueError(f"{name} takes no parameter {key!r}; it takes {', '.join(accepted)}")
        kind = PARAMETERS[key].kind
        if not fits(value, kind):
            raise ValueError(f"{name}: {key} must be {describe(kind)}, got {value!r}")
        arguments[key] = kind(value)
    return strategy_class(name)(**arguments)


def fits(value: Any, kind: type) -> bool:
    """Whether `value` is of a parameter's `kind` (never a bool; an int is a float too)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def describe(kind: type) -> str:
    """A parameter's type in a user's words: "a number", "an integer"."""
    return "a number" if kind is float else "an integer"
