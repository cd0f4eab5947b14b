"""One simulated client's round: the same `train` as a deployed worker runs, on a shared model.

A process that simulates clients holds one `ClientTrainer`: one model and one optimizer that
every client trains on in turn, and the shared dataset that clients' index tensors point into.
`run_client` loads the global weights, trains the client's samples with its task's config
and copies the weights out, so a client's model and optimizer state exist only while it
trains. Backends call it; the sequential backend in this process, a Ray backend in its actors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tether.federated.delegated.training import TrainConfig, canonical, optimizer_class, train
from tether.federated.strategies import State, Task, Update


@dataclass(frozen=True)
class ClientJob:
    """One client's part of one round: its name, the indices of its samples in the shared
    dataset, and the task its strategy gave it (the training config, with the client's seed
    for this round, and SCAFFOLD's correction if any)."""

    client: str
    indices: torch.Tensor
    task: Task


@dataclass(frozen=True)
class ClientResult:
    """What one client's training gives the engine: the update the strategy aggregates, and
    the mean loss of its batches (for the round's metrics)."""

    update: Update
    loss: float


class ClientTrainer:
    """One model, one optimizer per optimizer class, and the shared dataset: what every
    client of one process trains with, one client at a time."""

    def __init__(self, model: nn.Module, data: torch.Tensor, targets: torch.Tensor) -> None:
        if len(data) != len(targets):
            raise ValueError(f"data has {len(data)} samples and targets {len(targets)}")
        self.model = model
        self.data, self.targets = canonical(data), canonical(targets)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}

    def optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        """The optimizer `config` names, made once over the model's trained parameters (`train`
        clears its state and sets its arguments for every client)."""
        made = self._optimizers.get(config.optimizer)
        if made is None:
            cls = optimizer_class(config.optimizer, config.optimizer_args)
            params = [p for p in self.model.parameters() if p.requires_grad]
            made = self._optimizers[config.optimizer] = cls(params, **config.optimizer_args)
        return made


def run_client(trainer: ClientTrainer, global_state: State, job: ClientJob) -> ClientResult:
    """Train `job`'s client from `global_state` on its samples, as a deployed worker's `fit`
    would; its update carries a copy of the trained weights."""
    model = trainer.model
    model.load_state_dict(global_state)
    config = job.task.config
    data = trainer.data.index_select(0, job.indices)
    targets = trainer.targets.index_select(0, job.indices)
    result = train(
        model,
        data,
        targets,
        config,
        optimizer=trainer.optimizer(config),
        correction=job.task.correction,
    )
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    losses = result["losses"]
    return ClientResult(
        Update(job.client, state, result["samples"], result["batches"], result.get("within_clip")),
        sum(losses) / len(losses) if losses else float("nan"),
    )
