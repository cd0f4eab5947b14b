"""A simulation's clients as Ray actors: the same rounds on every core of a Ray cluster.

`RayBackend` keeps the backend contract (see `backend.py`): each actor holds one
`ClientTrainer` (one model, one optimizer) and reads the shared dataset from Ray's object
store (put once; one copy per machine, mapped read-only by every actor there). Each round the
global weights are put once, the round's jobs are cut into consecutive chunks, a few per actor,
and every chunk is trained by `run_client` exactly as the sequential backend trains it, with
the seed each job carries. Results come back in the jobs' order, chunk by chunk, so the engine
aggregates in the same order as in process and the weights agree up to floating-point
rounding (the actors use one torch thread each).

Ray ships the model to the actors with its own serialization (pickle): a Ray cluster is the
scientist's own machines, one trust domain, not a data owner's node (those are reached through
a Node and the op table, never through Ray).

Ray is an optional extra: `pip install "tether[ray]"`. `address=None` starts a local Ray
instance on 127.0.0.1 with `num_cpus` cores (default: all); an address (`"ray://..."`,
`"host:6379"` or `"auto"`) joins a running cluster, see docs/simulation.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tether.federated.simulation.backend import Backend, ClientJob, ClientResult
from tether.federated.simulation.client import ClientTrainer, run_client
from tether.federated.strategies import State, Update

try:
    import ray
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        'the Ray backend needs Ray: pip install "tether[ray]" (or pip install ray)'
    ) from error

# What an actor sends back per client: name, weights, samples, steps, mean loss.
_Sent = tuple[str, dict[str, np.ndarray], int, int, float]
CHUNKS_PER_ACTOR = 4  # enough to even out the actors' load, few enough to keep calls cheap


class RayBackend(Backend):
    """Clients trained by `actors` Ray actors (default: one per CPU of the cluster), each
    holding one model and optimizer; see the module docstring."""

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        actors: int | None = None,
    ) -> None:
        if actors is not None and (type(actors) is not int or actors < 1):
            raise ValueError(f"actors must be a positive integer, got {actors!r}")
        if address is not None and num_cpus is not None:
            raise ValueError("num_cpus sizes a local Ray instance; a cluster has its own")
        self.address, self.num_cpus, self.actors = address, num_cpus, actors
        self._workers: list[Any] = []
        self._started_ray = False

    def start(self, model: nn.Module, data: torch.Tensor, targets: torch.Tensor) -> None:
        if not ray.is_initialized():
            if self.address is None:
                ray.init(
                    address="local",  # a new instance, never a cluster found on this machine
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    log_to_driver=False,
                )
            else:
                ray.init(address=self.address, log_to_driver=False)
            self._started_ray = True
        count = self.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        shared = ray.put(_as_numpy(data)), ray.put(_as_numpy(targets))
        model_ref = ray.put(model)
        self._workers = [_RemoteActor.remote(model_ref, *shared) for _ in range(count)]

    def fit_clients(self, global_state: State, jobs: Sequence[ClientJob]) -> Iterator[ClientResult]:
        if not self._workers:
            raise RuntimeError("RayBackend.fit_clients before start()")
        weights_ref = ray.put(_to_numpy(global_state))
        size = max(1, math.ceil(len(jobs) / (CHUNKS_PER_ACTOR * len(self._workers))))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        pending = [
            self._workers[i % len(self._workers)].fit.remote(weights_ref, list(chunk))
            for i, chunk in enumerate(chunks)
        ]
        for ref in pending:  # in the jobs' order; later chunks keep training meanwhile
            for client, weights, samples, steps, loss in ray.get(ref):
                state = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
                yield ClientResult(Update(client, state, samples, steps), loss)

    def close(self) -> None:
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor as a numpy array: Ray's object store passes those without pickling their
    bytes (a reader maps them read-only), where a torch tensor is pickled and copied."""
    return tensor.detach().cpu().contiguous().numpy()


def _to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {key: _as_numpy(value) for key, value in state.items()}


def _from_store(array: np.ndarray) -> torch.Tensor:
    """A tensor over an array read from the object store, without copying: read-only memory,
    which the actors only read (the data, the global weights loaded into their model)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class _ClientActor:
    """One actor's `ClientTrainer`: the model, its optimizer, and the shared dataset mapped
    from the object store (read-only: training only reads the data)."""

    def __init__(self, model: nn.Module, data: np.ndarray, targets: np.ndarray) -> None:
        torch.set_num_threads(1)
        self.trainer = ClientTrainer(model, _from_store(data), _from_store(targets))

    def fit(self, global_state: dict[str, np.ndarray], jobs: list[ClientJob]) -> list[_Sent]:
        """Each job's result as plain values and numpy weights (see `_as_numpy`)."""
        state = {key: _from_store(value) for key, value in global_state.items()}
        sent = []
        for job in jobs:
            result = run_client(self.trainer, state, job)
            update = result.update
            weights = _to_numpy(update.state)
            sent.append((update.worker, weights, update.samples, update.steps, result.loss))
        return sent


_RemoteActor: Any = ray.remote(num_cpus=1)(_ClientActor)  # one CPU each: one client at a time
