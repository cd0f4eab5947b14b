"""In-memory datasets, and `materialize`, which turns any dataset into two tensors.

Federating a dataset means cutting it into tensors and sending them to workers, so the whole
transformed dataset is needed at once. For tether's own datasets with the standard transforms
that is one vectorized call instead of one Python call per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from tether.errors import DatasetError
from tether.transforms import Compose, Normalize, ToTensor

# Above this many samples the per-sample path shows a progress bar.
_PROGRESS_THRESHOLD = 10_000


class BaseDataset(Dataset):
    """A dataset over in-memory tensors: sample i is `(transform(data[i]), targets[i])`.

    Integer targets come back as Python ints, as torchvision datasets return labels.

    Of two pointers to tensors on one worker (PySyft's Part 07: `sy.BaseDataset(data_ptr,
    target_ptr)`), it is a dataset on that worker: a part of a `FederatedDataset`, whose
    `location` is the worker.
    """

    def __init__(
        self,
        data: Any,
        targets: Any,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        remote = _on_a_worker(data) or _on_a_worker(targets)
        self.data = data if remote else torch.as_tensor(data)
        self.targets = targets if remote else torch.as_tensor(targets)
        if remote and not (
            _on_a_worker(data) and _on_a_worker(targets) and data.location is targets.location
        ):
            raise TypeError(
                "a BaseDataset of pointers needs its data and targets on one worker "
                "(send both there first)"
            )
        if self.data.shape[0] != self.targets.shape[0]:
            raise ValueError(
                f"data has {self.data.shape[0]} samples but targets has {self.targets.shape[0]}"
            )
        self.transform = transform
        self.target_transform = target_transform

    @property
    def location(self) -> Any:
        """The worker holding the data (None: it is here)."""
        data: Any = self.data
        return data.location if _on_a_worker(data) else None

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img: Any = self.data[index]
        target: Any = self.targets[index]
        if target.ndim == 0 and not (target.is_floating_point() or target.is_complex()):
            target = int(target)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        """The samples a DataLoader batch asks for, equal to `[self[i] for i in indices]`. Where
        the transforms map over a batch exactly as over each sample (`_vectorizable`), the
        batch is transformed in one call rather than one per sample: ~10 tensor ops a batch
        instead of ~13 a sample, which is what a Duet owner's guard pays for (about 13 µs an
        op: the SyNet epoch of benchmarks/bench_duet.py)."""
        if not _vectorizable(self):
            return [self[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.long)
        imgs = self.data[index]
        if self.transform is not None:
            imgs = self.transform(imgs)
        targets = self.targets[index]
        integral = targets.ndim == 1 and not (targets.is_floating_point() or targets.is_complex())
        labels = targets.tolist() if integral else list(targets.unbind(0))
        return list(zip(imgs.unbind(0), labels, strict=True))


def _on_a_worker(value: Any) -> bool:
    """Whether `value` is a pointer to data on a worker: not a tensor, and has a `location`
    (the data layer sits below the pointers, so it knows them only by that)."""
    return not isinstance(value, torch.Tensor) and getattr(value, "location", None) is not None


def materialize(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the whole transformed dataset as `(data, targets)` tensors.

    Equal to stacking `dataset[i]` for every i; integer labels come back as int64. A tether
    dataset whose transform is None, ToTensor, Normalize or a Compose of those is transformed
    in one vectorized call; any other dataset (torchvision's too) is read sample by sample.
    """
    n = len(dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; map-style ones have it
    if n == 0:
        raise DatasetError("cannot materialize an empty dataset")
    if isinstance(dataset, BaseDataset) and _vectorizable(dataset):
        data = dataset.data
        data = data.clone() if dataset.transform is None else torch.vmap(dataset.transform)(data)
        return data.contiguous(), _as_targets(dataset.targets.clone())
    xs, ys = [], []
    for i in tqdm(range(n), desc="materialize", disable=n <= _PROGRESS_THRESHOLD):
        x, y = dataset[i]
        xs.append(_as_tensor(x))
        ys.append(y)
    if isinstance(ys[0], torch.Tensor):
        targets = torch.stack(ys)
    else:
        targets = torch.as_tensor(np.asarray(ys))
    return torch.stack(xs), _as_targets(targets)


def _vectorizable(dataset: BaseDataset) -> bool:
    """Whether the transforms are known to map over a dataset's images (`torch.vmap`) exactly
    as they act on each sample."""
    t = dataset.transform
    if dataset.target_transform is not None:
        return False
    if t is None:
        return True
    parts = t.transforms if type(t) is Compose else [t]
    return all(type(p) in (ToTensor, Normalize) for p in parts)


def _as_tensor(x: Any) -> torch.Tensor:
    """A sample as a tensor; PIL images and arrays go through numpy."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _as_targets(targets: torch.Tensor) -> torch.Tensor:
    """Integer labels as int64, the dtype torch's losses expect; others unchanged."""
    if targets.is_floating_point() or targets.is_complex():
        return targets
    return targets.to(torch.int64)
