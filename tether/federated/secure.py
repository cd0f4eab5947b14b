"""Secure aggregation in delegated training (`Coordinator(secure_aggregation=True)`,
`tether train --secure-aggregation`): the coordinator learns the weighted sum of the workers'
moves and the sum of their weights, never one worker's update.

Each round, `secure_fit` trains every chosen worker and leaves its update, encoded in the
ring, in a `MaskingClient` on the worker; `SecureRound` then runs the protocol's steps
(tether.privacy.secagg.protocol) across them, all workers of a step at once, and decodes the
sum into the `Sum` that `Strategy.aggregate_sum` steps from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tether.federated.delegated import MASKED_INPUT, SHARE_KEYS, UNMASK
from tether.federated.delegated.remote import remote_step
from tether.federated.delegated.training import TrainConfig
from tether.federated.strategies import Strategy
from tether.federated.strategies.base import Sum
from tether.privacy.secagg import Aggregation, Encoding, Setup
from tether.privacy.secagg.ring import DEFAULT_CLIP, DEFAULT_COUNT_CLIP

# The bound on one worker's weight when the samples it trains on are not capped by the config.
DEFAULT_MAX_SAMPLES = 2**16


@dataclass(frozen=True)
class SecureAggregation:
    """How rounds are securely aggregated. `threshold`: the fewest workers each step needs
    (and the fewest that, with the coordinator, could unmask one worker); None: a majority
    of the round's workers. `clip`, `count_clip`: the range of each floating-point and each
    integer coordinate of a move (tether.privacy.secagg.ring). `max_weight`: the bound on one
    worker's weight (larger ones count as it); None: the samples the config lets a worker
    train on per round (`max_batches * batch_size`), else 65,536; 1 where the strategy
    weighs workers equally. `step_timeout`: how long each step after training waits for the
    workers (they answer in well under a second); None: the round timeout."""

    threshold: int | None = None
    clip: float = DEFAULT_CLIP
    count_clip: float = DEFAULT_COUNT_CLIP
    max_weight: float | None = None
    step_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and (type(self.threshold) is not int or self.threshold < 2):
            raise ValueError(
                f"the secure aggregation threshold must be an integer >= 2, got {self.threshold!r}"
            )
        Encoding(1, self.max_weight or 1.0, self.clip, self.count_clip)  # checks the numbers
        if self.step_timeout is not None and not (
            isinstance(self.step_timeout, int | float) and self.step_timeout > 0
        ):
            raise ValueError(f"step_timeout must be a positive number, got {self.step_timeout!r}")

    @classmethod
    def parse(cls, value: Any) -> SecureAggregation | None:
        """From `Coordinator(secure_aggregation=...)`: False/None (off), True (defaults) or
        settings."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, SecureAggregation):
            return value
        raise TypeError(
            f"secure_aggregation must be True, False or SecureAggregation, got {value!r}"
        )

    def check(self, strategy: Strategy) -> None:
        """Refuse a strategy that needs each update (it would see only their sum)."""
        if strategy.needs_each_update:
            raise ValueError(
                f"strategy {strategy.name} needs each worker's update, and secure aggregation "
                "shows the coordinator only their sum: use a strategy that steps from the mean "
                "(fedavg, fedprox, fedavgm, fedadam, fedadagrad, fedyogi) or turn secure "
                "aggregation off"
            )

    def setup(self, workers: int, strategy: Strategy, config: TrainConfig) -> Setup:
        """A fresh round's setup for `workers` workers."""
        threshold = self.threshold if self.threshold is not None else max(workers // 2 + 1, 2)
        if threshold > workers:
            raise RoundTooSmall(
                f"{workers} workers can take part, fewer than the secure aggregation "
                f"threshold {threshold}"
            )
        encoding = Encoding(
            workers, self.weight_bound(strategy, config), float(self.clip), float(self.count_clip)
        )
        return Setup.fresh(threshold, encoding)

    def weight_bound(self, strategy: Strategy, config: TrainConfig) -> float:
        if not strategy.weigh_by_samples:
            return 1.0
        if self.max_weight is not None:
            return float(self.max_weight)
        if config.max_batches is not None:
            return float(config.max_batches * config.batch_size)
        return float(DEFAULT_MAX_SAMPLES)


class RoundTooSmall(ValueError):
    """Too few workers for the threshold before the round starts."""


@dataclass
class Kept:
    """A worker's part in a round: its client, the pointer to its `MaskingClient`, its receipt."""

    client: Any
    pointer: Any
    receipt: dict[str, Any]


class SecureRound:
    """The steps after training, across the workers that trained (`kept`). `timeout`: how
    long one step waits for the workers; `on_step(name)`: called after each step."""

    def __init__(
        self,
        setup: Setup,
        state: Mapping[str, torch.Tensor],
        kept: Mapping[str, Kept],
        timeout: float,
        on_step: Callable[[str], None] = lambda step: None,
    ) -> None:
        self.setup, self.state, self.kept = setup, state, dict(kept)
        self.timeout, self.on_step = timeout, on_step
        self.aggregation = Aggregation(setup, setup.encoding.length(state))
        self.left_out: dict[str, str] = {}

    def run(self) -> Sum:
        """The survivors' `Sum`; RoundAborted (nothing unmasked) with fewer than t at a step."""
        agg = self.aggregation
        roster = agg.roster({name: k.receipt["keys"] for name, k in self.kept.items()})
        self.on_step("advertised")
        sent = self._step(SHARE_KEYS, dict.fromkeys(roster, roster))
        mail = agg.route(sent)
        self.on_step("shared")
        masked = self._step(MASKED_INPUT, mail)
        for name, vector in masked.items():
            try:
                agg.add(name, _ring_vector(vector))
            except ValueError as exc:
                self.left_out[name] = str(exc)
        survivors = agg.collected()
        self.on_step("masked")
        answers = self._step(UNMASK, dict.fromkeys(survivors, survivors))
        total = agg.unmask(answers)
        self.on_step("unmasked")
        moves, weight = self.setup.encoding.decode(total, self.state)
        return Sum(moves, weight, len(survivors))

    def _step(self, op: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Run one step on each named worker at once; the answers within the timeout (the
        others are left out, with why)."""
        answers: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}

        def work(name: str) -> None:
            kept = self.kept[name]
            try:
                answers[name] = remote_step(kept.client, op, kept.pointer, arguments[name])
            except BaseException as exc:  # reported as the worker's, never lost in the thread
                errors[name] = exc

        threads = {
            name: threading.Thread(target=work, args=(name,), name=f"secagg-{name}", daemon=True)
            for name in arguments
        }
        for thread in threads.values():
            thread.start()
        deadline = time.monotonic() + self.timeout
        for thread in threads.values():
            thread.join(max(deadline - time.monotonic(), 0.0))
        done = {}
        step = op.rsplit(".", 1)[1]
        for name, thread in threads.items():
            if thread.is_alive():
                self.left_out[name] = f"missed the {step} step's timeout of {self.timeout:g} s"
            elif name in errors:
                self.left_out[name] = f"failed at {step}: {errors[name]}"
            else:
                done[name] = answers[name]
        return done


def _ring_vector(value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint32 or value.dim() != 1:
        raise ValueError("the masked input is not a vector of uint32 ring elements")
    return value.numpy()
