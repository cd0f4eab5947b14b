"""The simulation engine: N virtual clients over one partitioned dataset, round after round.

Each round the strategy picks the clients (`sample`), says what each runs (`configure`), a
backend trains them (`Backend.fit_clients`, sequentially in this process by default) and the
strategy aggregates their updates (`aggregate`): the steps, strategies, seeds and `train`
that a `Coordinator` uses for `tether train`, so a simulated run gives the weights a deployed
one would. There is no remote party, so nothing goes through a Node.

Clients are index tensors into the one dataset (no per-client copies); between rounds only
the global weights and the strategy's own state exist.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from tether.federated.coordinator import round_seed
from tether.federated.data.partition import parse_spec
from tether.federated.delegated.training import EvalConfig, TrainConfig, score
from tether.federated.simulation.backend import Backend, ClientJob, SequentialBackend
from tether.federated.simulation.fold import RunningAverage, folds
from tether.federated.strategies import FedAvg, State, Strategy, Update

Partition = str | Callable[[torch.Tensor], Sequence[torch.Tensor]] | Sequence[torch.Tensor]


@dataclass
class SimulationResult:
    """What a run leaves: the global weights, the model loaded with them, one record per
    round (`round`, `clients`, `samples`, `train_loss`, `seconds`; and `accuracy`,
    `test_loss`, `eval_seconds` in the rounds the test set scored the model)."""

    state: State
    model: nn.Module
    history: list[dict[str, Any]]


class Simulation:
    """`Simulation(model, (data, targets), partition="iid:100").run()`.

    `partition`: a spec (`'iid:N'`, `'dirichlet:N:ALPHA'`, `'shards:N:K'`,
    `'labels-per-client:N:K'`, `'labels:0-3/4-6/7-9'`), a function from the targets to one
    index tensor per client, or the index tensors themselves; client i is named `client{i}`.
    `config`: what every client trains per round (as `tether train`'s workers); its seed is
    varied per round and client as the coordinator varies it. `seed`: the run's seed (the
    spec's partition, the sampling and the batch orders; default the config's). `test`:
    `(data, targets)` the global model is scored on after round 1, every `eval_every` rounds
    and after the last. `backend`: where clients train (default: one after another here).
    `on_round(record)` is called after each round with its record (to log or time it)."""

    def __init__(
        self,
        model: nn.Module,
        dataset: tuple[torch.Tensor, torch.Tensor],
        *,
        partition: Partition,
        strategy: Strategy | None = None,
        config: TrainConfig | dict[str, Any] | None = None,
        rounds: int = 1,
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
        eval_every: int = 1,
        eval_config: EvalConfig | dict[str, Any] | None = None,
        seed: int | None = None,
        backend: Backend | None = None,
        progress: bool = False,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        for name, value in (("rounds", rounds), ("eval_every", eval_every)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if seed is not None and type(seed) is not int:
            raise ValueError(f"seed must be an integer, got {seed!r}")
        data, targets = _pair(dataset, "dataset")
        self.model = model
        self.data, self.targets = data, targets
        base = TrainConfig.parse(config or {})
        self.config = base if seed is None else replace(base, seed=seed)
        self.parts = _partition(partition, targets, self.config.seed)
        self.clients = [f"client{i}" for i in range(len(self.parts))]
        self._index = {name: i for i, name in enumerate(self.clients)}
        self.strategy = strategy if strategy is not None else FedAvg()
        self.rounds, self.eval_every = rounds, eval_every
        self.test = None if test is None else _pair(test, "test")
        self.eval_config = EvalConfig.parse(eval_config or {"loss": self.config.loss})
        self.backend = backend if backend is not None else SequentialBackend()
        self.progress = progress
        self.on_round = on_round
        self.state: State = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.history: list[dict[str, Any]] = []

    def run(self) -> SimulationResult:
        """Every round; the global model and the history."""
        from tqdm import tqdm

        self.backend.start(self.model, self.data, self.targets)
        bar = tqdm(
            range(1, self.rounds + 1), desc="rounds", unit="round", disable=not self.progress
        )
        try:
            for r in bar:
                record = self._round(r)
                self.history.append(record)
                if self.on_round is not None:
                    self.on_round(record)
                if "accuracy" in record:
                    bar.set_postfix_str(f"acc {100 * record['accuracy']:.1f}%")
        finally:
            bar.close()
            self.backend.close()
        self.model.load_state_dict(self.state)
        return SimulationResult(dict(self.state), self.model, self.history)

    def jobs(self, r: int) -> list[ClientJob]:
        """Round `r`'s clients and what each runs, as the coordinator would ask them."""
        seed = self.config.seed
        chosen = self.strategy.sample(r, self.clients, random.Random(round_seed(seed, r, -1)))
        jobs = []
        for name in chosen:
            i = self._index[name]
            config = replace(self.config, seed=round_seed(seed, r, i))
            jobs.append(ClientJob(name, self.parts[i], self.strategy.configure(r, name, config)))
        return jobs

    def _round(self, r: int) -> dict[str, Any]:
        start = time.perf_counter()
        fold = RunningAverage() if folds(self.strategy) else None
        updates: list[Update] = []
        weighted_loss, clients, samples = 0.0, 0, 0
        jobs = self.jobs(r)  # none at all only where the strategy samples none (DP-FedAvg)
        for result in self.backend.fit_clients(self.state, jobs):
            if fold is not None:
                fold.add(result.update)
            else:
                updates.append(result.update)
            weighted_loss += result.loss * result.update.samples
            clients += 1
            samples += result.update.samples
        if clients == 0 and jobs:
            raise RuntimeError(f"round {r}: the backend returned no updates")
        if fold is not None:
            updates = [fold.update({key: value.dtype for key, value in self.state.items()})]
        self.state = self.strategy.aggregate(r, updates, self.state)
        record: dict[str, Any] = {
            "round": r,
            "clients": clients,
            "samples": samples,
            "train_loss": weighted_loss / samples if samples else float("nan"),
            "seconds": time.perf_counter() - start,
            **self.strategy.record(),
        }
        if self.test is not None and ((r - 1) % self.eval_every == 0 or r == self.rounds):
            self.model.load_state_dict(self.state)
            scored = score(self.model, *self.test, self.eval_config)
            record.update(
                accuracy=scored["accuracy"],
                test_loss=scored["loss"],
                eval_seconds=scored["seconds"],
            )
        return record


def _pair(pair: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (
        isinstance(pair, tuple | list)
        and len(pair) == 2
        and all(isinstance(t, torch.Tensor) for t in pair)
    ):
        raise ValueError(f"{what} must be a (data, targets) pair of tensors")
    data, targets = pair
    if len(data) != len(targets) or len(data) == 0:
        raise ValueError(
            f"{what} has {len(data)} samples and {len(targets)} targets; they must match and "
            "not be empty"
        )
    return data, targets


def _partition(partition: Partition, targets: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """One int64 index tensor per client, each checked against the dataset's size."""
    parts: Sequence[torch.Tensor]
    if isinstance(partition, str):
        parts = parse_spec(partition, seed)(targets)
    elif callable(partition):
        parts = partition(targets)
    else:
        parts = partition
    checked = []
    for i, part in enumerate(parts):
        if not isinstance(part, torch.Tensor) or part.ndim != 1 or part.is_floating_point():
            raise ValueError(f"client {i}'s part must be a 1-D tensor of sample indices")
        if len(part) == 0:
            raise ValueError(f"client {i}'s part is empty: every client needs samples")
        if int(part.min()) < 0 or int(part.max()) >= len(targets):
            raise ValueError(
                f"client {i}'s part indexes outside the dataset's {len(targets)} samples"
            )
        checked.append(part.to(torch.int64))
    if not checked:
        raise ValueError("the partition gave no clients")
    return checked
