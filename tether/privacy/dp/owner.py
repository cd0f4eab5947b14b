"""The worker owner's rules for differentially private training, and the settings of one run.

The owner sets a floor (noise multiplier, clipping norm) and a budget (ε at δ, per dataset);
`tether worker --dp-noise 1.1 --dp-clip 1.0 --max-epsilon 8 --delta 1e-5` or, in Python,
`enforce_dp(node, OwnerDP(...))` (tether.federated.delegated). The node hands the rules to every
`fit` as an argument of its own, which no client can pass. A coordinator may ask for more
privacy (more noise, a smaller clipping norm), never for less.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tether.privacy.dp.accountant import Steps
from tether.privacy.dp.ledger import Charge, Ledger, fingerprint

DEFAULT_DELTA = 1e-5  # when a coordinator asks for DP on a worker whose owner set none
# Why `evaluate` is refused on a worker whose owner requires DP.
EXACT_METRICS_REFUSED = (
    "this worker's owner protects its data with differential privacy, and exact evaluation "
    "metrics would go around it: evaluate on a worker serving a test set"
)


@dataclass(frozen=True)
class DPSettings:
    """How one DP-SGD run clips and noises: each sample's gradient clipped to norm `clip`,
    Gaussian noise of standard deviation `noise * clip` added to the batch's sum."""

    noise: float
    clip: float

    @classmethod
    def parse(cls, value: Mapping[str, Any] | DPSettings) -> DPSettings:
        """From a config's `dp` entry, `{"noise": 1.1, "clip": 1.0}`; ValueError otherwise."""
        if isinstance(value, DPSettings):
            return value
        if not isinstance(value, Mapping) or set(value) != {"noise", "clip"}:
            raise ValueError(
                f"dp must be a mapping with the keys 'noise' and 'clip', got {value!r}"
            )
        for key in ("noise", "clip"):
            number = value[key]
            if type(number) not in (int, float) or not 0 < number < 1e6:
                raise ValueError(f"dp {key} must be a positive number, got {number!r}")
        return cls(float(value["noise"]), float(value["clip"]))

    def to_dict(self) -> dict[str, float]:
        return {"noise": self.noise, "clip": self.clip}


class OwnerDP:
    """A worker owner's DP rules: every `fit` on this worker trains with DP-SGD at noise
    multiplier >= `noise` and clipping norm <= `clip`, and is refused if it would take the
    dataset past ε = `max_epsilon` at `delta`. `ledger`: the JSON file where the spend is kept
    (None: in memory, forgotten at exit; for tests and simulations)."""

    def __init__(
        self,
        noise: float,
        clip: float,
        max_epsilon: float,
        delta: float = DEFAULT_DELTA,
        ledger: str | Path | Ledger | None = None,
    ) -> None:
        self.floor = DPSettings.parse({"noise": noise, "clip": clip})
        if type(max_epsilon) not in (int, float) or not 0 < max_epsilon < math.inf:
            raise ValueError(f"max_epsilon must be a positive number, got {max_epsilon!r}")
        if type(delta) not in (int, float) or not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        self.max_epsilon, self.delta = float(max_epsilon), float(delta)
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self._fingerprints: dict[tuple[int, int], str] = {}

    def __repr__(self) -> str:
        return (
            f"OwnerDP(noise={self.floor.noise:g}, clip={self.floor.clip:g}, "
            f"max_epsilon={self.max_epsilon:g}, delta={self.delta:g})"
        )

    def settle(self, asked: DPSettings | None) -> DPSettings:
        """The settings a run uses: the coordinator's if it asked for at least the owner's
        privacy, the owner's if it asked nothing; ValueError if it asked for less."""
        if asked is None:
            return self.floor
        if asked.noise < self.floor.noise or asked.clip > self.floor.clip:
            raise ValueError(
                f"this worker's owner requires DP noise >= {self.floor.noise:g} and clipping "
                f"norm <= {self.floor.clip:g}; the job asked for noise {asked.noise:g}, clip "
                f"{asked.clip:g}: ask for at least as much privacy, or leave dp out"
            )
        return asked

    def charge(self, data: torch.Tensor, targets: torch.Tensor, steps: Steps) -> Charge:
        """Record a run's steps against the dataset `(data, targets)`, before it trains;
        BudgetError (saying what is spent and the limit) if they would exceed the budget."""
        return self.ledger.charge(self.dataset(data, targets), steps, self.delta, self.max_epsilon)

    def dataset(self, data: torch.Tensor, targets: torch.Tensor) -> str:
        """The ledger's name of a dataset, computed once per pair of tensors (a coordinator's
        pointers to a dataset are the same objects every round)."""
        key = (id(data), id(targets))
        found = self._fingerprints.get(key)
        if found is None:
            found = self._fingerprints[key] = fingerprint(data, targets)
            for tensor in (data, targets):  # forget it with the tensors (ids are reused)
                weakref.finalize(tensor, self._fingerprints.pop, key, None)
        return found
