"""Where a simulation's clients train: the backend interface, and the default backend.

A backend is what the engine (`Simulation`) hands each round's training to. Its contract:

- `start(model, data, targets)` is called once, before round 1. `model` is the simulation's
  model (its architecture; its weights are replaced for every client), `data` and `targets`
  the one shared dataset every client's indices point into. A backend keeps what it needs to
  train (the sequential backend: one `ClientTrainer`; a Ray backend: the model and the data
  put in the object store once, and one trainer per actor).
- `fit_clients(global_state, jobs)` trains every job of one round from `global_state` and
  returns one `ClientResult` (the client's `Update` and its mean training loss) per job, **in
  the order of the jobs** (the engine aggregates in that order, so a run repeats exactly).
  Each job is trained as `run_client(trainer, global_state, job)` trains it (see `client.py`):
  the same `train` as `tether train`, with the seed the job's config carries, so any backend
  gives the same weights. An Update's state must be the backend's own copy (the engine may
  keep it after the next client trains). The engine consumes the result once, in order: a
  backend may return a list, or yield results as they finish so that the engine can fold
  them into the aggregate without holding the whole round's weights. A client that fails
  raises; the engine stops the run with that error.
- `close()` releases what `start` took; called once, also when the run fails.

A backend never calls the strategy: sampling, configuring and aggregating are the engine's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from tether.federated.simulation.client import ClientJob, ClientResult, ClientTrainer, run_client
from tether.federated.strategies import State

__all__ = ["Backend", "ClientJob", "ClientResult", "SequentialBackend"]


class Backend(ABC):
    """Runs a round's client training; see the module docstring for the contract."""

    @abstractmethod
    def start(self, model: nn.Module, data: torch.Tensor, targets: torch.Tensor) -> None:
        """Take the model and the shared dataset, once, before round 1."""

    @abstractmethod
    def fit_clients(self, global_state: State, jobs: Sequence[ClientJob]) -> Iterable[ClientResult]:
        """One ClientResult per job, in the jobs' order, each trained from `global_state`."""

    @abstractmethod
    def close(self) -> None:
        """Release what `start` took."""


class SequentialBackend(Backend):
    """Every client in this process, one after another, on one model and one optimizer: a
    client's model and optimizer state exist only while it trains.

    `threads`: torch's intra-op threads while clients train (None: leave torch's setting).
    One by default: a client's batches are too small for threads to pay, and on busy cores
    threads that wait for each other cost many times the work (20 clients of 50 MNIST
    images, MLP: 1.6 s per round with one thread, 11 s with two, on 2 shared cores)."""

    def __init__(self, threads: int | None = 1) -> None:
        if threads is not None and (type(threads) is not int or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        self.trainer: ClientTrainer | None = None

    def start(self, model: nn.Module, data: torch.Tensor, targets: torch.Tensor) -> None:
        self.trainer = ClientTrainer(model, data, targets)

    def fit_clients(self, global_state: State, jobs: Sequence[ClientJob]) -> Iterator[ClientResult]:
        if self.trainer is None:
            raise RuntimeError("SequentialBackend.fit_clients before start()")
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            for job in jobs:
                yield run_client(self.trainer, global_state, job)
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        self.trainer = None
