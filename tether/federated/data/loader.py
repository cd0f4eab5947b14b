"""`FederatedDataLoader`: batches of a federated dataset, cut where the data lives."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch

from tether.federated.data.dataset import FederatedDataset
from tether.remote.hook import send_tensor
from tether.remote.pointer import Pointer
from tether.wire import Ref


class FederatedDataLoader:
    """Yields `(data_ptr, target_ptr)` batches worker by worker; `data_ptr.location` is the
    worker holding the batch. A worker's batches are cut there at once, as views, by one
    `split` per tensor, so an epoch costs a few commands per worker, never one per batch
    (PySyft's loader sent one per sample).

    Shuffling draws each epoch's order from torch's global RNG, as `DataLoader` does (pass a
    `generator` to keep it apart)."""

    def __init__(
        self,
        federated_dataset: FederatedDataset,
        batch_size: int = 8,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(federated_dataset, FederatedDataset):
            raise TypeError(
                "FederatedDataLoader takes a FederatedDataset: "
                "call dataset.federate((worker, ...)) first"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.federated_dataset = federated_dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def _batches(self, size: int) -> int:
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)

    def __len__(self) -> int:
        return sum(self._batches(p.size) for p in self.federated_dataset.datasets.values())

    def __iter__(self) -> Iterator[tuple[Pointer, Pointer]]:
        for part in self.federated_dataset.datasets.values():
            data, targets = part.data, part.targets
            if self.shuffle:
                # A shuffled epoch's order goes to the worker once and is applied there once
                # (gathering no more than batch by batch would); each batch is then a slice.
                order = send_tensor(
                    torch.randperm(part.size, generator=self._epoch_generator()), part.location
                )
                data, targets = data[order], targets[order]
            count = self._batches(part.size)
            yield from itertools.islice(
                zip(self._split(data, part.size), self._split(targets, part.size), strict=True),
                count,
            )

    def _split(self, tensor: Pointer, size: int) -> list[Pointer]:
        """Pointers to the tensor's batches (the last one may be short), cut in one command."""
        return tensor.client.call_each(
            "torch.Tensor.split",
            [Ref(tensor.id), self.batch_size],
            None,
            math.ceil(size / self.batch_size),
        )

    def _epoch_generator(self) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        return torch.Generator().manual_seed(seed)
