"""Federated datasets: a dataset cut into parts that live, as private data, on workers.

`dataset.federate((joe, jane))` (a method on every torch Dataset once tether is imported),
or `tether.federate(dataset, workers, partition=...)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from tether.datasets import BaseDataset, materialize
from tether.federated.data import partition as partitioners
from tether.ops import PUBLISHED
from tether.remote.client import client_of
from tether.remote.pointer import Pointer

_KEYS = itertools.count()


@dataclass
class WorkerData:
    """One worker's part: pointers to its samples and their labels."""

    data: Pointer
    targets: Pointer
    size: int

    @property
    def location(self) -> Any:
        return self.data.location

    def __len__(self) -> int:
        return self.size


class FederatedDataset:
    """Parts of one dataset, each on its own worker: `sy.FederatedDataset([part, ...])` of
    datasets sent to workers (`BaseDataset(data, targets).send(bob)`) or made of pointers
    (`BaseDataset(data_ptr, target_ptr)`), or `dataset.federate`."""

    def __init__(self, parts: Sequence[WorkerData | BaseDataset], label_table: str = "") -> None:
        if not parts:
            raise ValueError("a FederatedDataset needs at least one part")
        placed = [_on_worker(part) for part in parts]
        self.datasets = {part.location.id: part for part in placed}
        self.label_table = label_table  # per-worker label counts, when the labels were known

    @property
    def workers(self) -> list[str]:
        return list(self.datasets)

    def __getitem__(self, worker_id: str) -> WorkerData:
        return self.datasets[worker_id]

    def __len__(self) -> int:
        return sum(part.size for part in self.datasets.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{w}: {p.size}" for w, p in self.datasets.items())
        return f"FederatedDataset({sizes})"


def _on_worker(part: Any) -> WorkerData:
    if isinstance(part, WorkerData):
        return part
    if (
        isinstance(part, BaseDataset)
        and isinstance(part.data, Pointer)
        and isinstance(part.targets, Pointer)
    ):  # PySyft's BaseDataset of pointers
        return WorkerData(part.data, part.targets, len(part))
    raise TypeError(
        f"a FederatedDataset is made of datasets on workers, got a local "
        f"{type(part).__name__}: send each first (dataset.send(worker)), or "
        "federate one (dataset.federate((bob, alice)))"
    )


Partition = str | Callable[[torch.Tensor], list[torch.Tensor]] | None


def federate(
    dataset: Dataset, workers: Sequence[Any], partition: Partition = None, seed: int = 0
) -> FederatedDataset:
    """Cut `dataset` into one part per worker and place each part on its worker as that
    worker's private data (it can be computed on, not fetched).

    `partition`: None for contiguous equal parts (as PySyft did), a partitioner spec such as
    "iid", "labels:0-3/4-6/7-9", "dirichlet:0.5", "shards:2", or a function of the targets
    returning one index tensor per worker.
    """
    workers = list(workers)
    if not workers:
        raise ValueError("federate needs at least one worker, e.g. dataset.federate((bob, alice))")
    data, targets = materialize(dataset)
    if len(workers) > len(data):
        raise ValueError(
            f"cannot federate {len(data)} samples across {len(workers)} workers: "
            "each worker needs at least one sample"
        )
    parts = _partition(partition, targets, len(workers), seed)
    placed = []
    for worker, index in zip(workers, parts, strict=True):
        key = f"federated-{next(_KEYS)}"
        publish = getattr(worker, "publish", None)
        if publish is None:
            raise TypeError(
                f"{worker!r} cannot be given data from here: a network worker loads "
                "its own (start it with `tether worker --dataset ...`)"
            )
        publish(f"{key}/data", data[index], description="federated samples")
        publish(f"{key}/targets", targets[index], description="federated labels")
        client = client_of(worker)
        placed.append(
            WorkerData(
                client.call(PUBLISHED, [f"{key}/data"]),
                client.call(PUBLISHED, [f"{key}/targets"]),
                len(index),
            )
        )
    table = (
        ""
        if targets.is_floating_point()
        else partitioners.format_label_table(targets, parts, [str(w.id) for w in workers])
    )
    return FederatedDataset(placed, table)


def _partition(
    partition: Partition, targets: torch.Tensor, n: int, seed: int
) -> list[torch.Tensor]:
    if partition is None:
        return list(torch.arange(len(targets)).tensor_split(n))
    if isinstance(partition, str):
        partition = partitioners.parse_spec(partitioners.with_count(partition, n), seed=seed)
    parts = partition(targets)
    if len(parts) != n:
        raise ValueError(f"the partition gives {len(parts)} parts for {n} workers")
    return parts


def _federate(dataset: Dataset, workers: Any, **options: Any) -> Any:
    """`dataset.federate((joe, jane))` on any torch Dataset (see `federate`)."""
    return federate(dataset, workers, **options)


def send_dataset(dataset: Dataset, destination: Any, *args: Any, **options: Any) -> Any:
    """`dataset.send(worker)` (PySyft): the samples and labels sent to the worker as the
    scientist's own data, a part of a `FederatedDataset`. To your own duet it publishes the
    dataset for a scientist instead (`dataset.send(duet, pointable=True, tags=...)`)."""
    receive = getattr(destination, "receive", None)
    if receive is not None:
        return receive(dataset, *args, **options)
    if args or options:
        raise TypeError(f"send to a worker takes no options, got {[*map(repr, args), *options]}")
    data, targets = materialize(dataset)
    client = client_of(destination)
    return WorkerData(client.put(data), client.put(targets), len(data))


def install() -> None:
    """Teach every torch Dataset `federate` and `send` (called by `import tether`). Idempotent."""
    Dataset.federate = _federate  # type: ignore[attr-defined]
    Dataset.send = send_dataset  # type: ignore[attr-defined]
