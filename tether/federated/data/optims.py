"""`Optims`: one optimizer per worker, as in `from syft.federated.floptimizer import Optims`.

Each copy has its own state, and when it steps remote parameters that state lives on the
worker it steps (see tether.remote.hook), so a worker's Adam moments never mix with another's.
"""

from __future__ import annotations

from typing import Any

import torch


def _same_kind(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A fresh optimizer of the same class and hyperparameters over the same parameters."""
    groups = [dict(g, params=list(g["params"])) for g in optimizer.param_groups]
    return type(optimizer)(groups, **optimizer.defaults)


class Optims:
    """`Optims(workers, optim=optim.Adam(params=model.parameters(), lr=0.1))`, then
    `optims.get_optim(worker_id)` gives that worker's optimizer."""

    def __init__(self, workers: list[Any], optim: torch.optim.Optimizer) -> None:
        if not workers:
            raise ValueError("Optims needs at least one worker")
        self.optimizers = {_worker_id(w): _same_kind(optim) for w in workers}

    def get_optim(self, worker_id: Any) -> torch.optim.Optimizer:
        key = _worker_id(worker_id)
        if key not in self.optimizers:
            raise KeyError(
                f"no optimizer for worker {key!r}; Optims knows {sorted(self.optimizers)}"
            )
        return self.optimizers[key]

    def count_vals(self) -> int:
        """How many optimizers there are (one per worker)."""
        return len(self.optimizers)


def _worker_id(worker: Any) -> str:
    return worker if isinstance(worker, str) else str(worker.id)
