"""What a node holds for one client: objects under client-chosen ids, each with its policy."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch


class Privacy(IntEnum):
    """Ordered from least to most restrictive; a result takes the maximum of its inputs'."""

    PUBLIC = 0  # the client's own data: it may have it back
    DERIVED = 1  # computed from private data: leaves only where the node releases derived results
    PRIVATE = 2  # the owner's data itself: leaves only through an accepted request


@dataclass(frozen=True, slots=True)
class Grant:
    """What a releasing routine (`fit`, `evaluate`, an aggregate the owner declared) returned,
    copied when it returned: under the `training` policy this copy, and only it, leaves."""

    routine: str
    snapshot: Any = field(repr=False)


@dataclass(frozen=True, slots=True)
class Poisoned:
    """What is stored in place of each result of a command on private data that failed, on a
    node that reports no failure of such commands (`strict`, and `training` outside its
    routines): the cause stays on the node, for the owner."""

    cause: str


@dataclass(slots=True)
class Stored:
    """A stored object and its policy. `readonly`: it shares memory with the owner's data, so
    in-place changes are refused. `grant`: set on a releasing routine's result (see Grant)."""

    value: Any
    privacy: Privacy = Privacy.PUBLIC
    readonly: bool = False
    nbytes: int = 0
    tags: tuple[str, ...] = ()
    description: str = ""
    grant: Grant | None = None
    provenance: str = ""  # for private and derived data: how it came from the published data


def tensor_nbytes(value: Any, whole: bool = False) -> int:
    """Bytes of tensor data that `value` keeps alive (counted per tensor, views included);
    `whole`: each tensor's whole storage, not just its view of it."""
    if isinstance(value, torch.Tensor):
        view = value.numel() * value.element_size()
        return max(view, value.untyped_storage().nbytes()) if whole else view
    if isinstance(value, list | tuple):
        return sum(tensor_nbytes(v, whole) for v in value)
    if isinstance(value, dict):
        return sum(tensor_nbytes(v, whole) for v in value.values())
    return 0


@dataclass
class Store:
    """One client's objects on a node, with the bytes they hold and why recent commands failed."""

    max_bytes: int
    objects: dict[int, Stored] = field(default_factory=dict)
    nbytes: int = 0
    failed: OrderedDict[int, str] = field(default_factory=OrderedDict)

    _FAILED_KEPT = 1024

    def __len__(self) -> int:
        return len(self.objects)

    def put(self, obj_id: int, stored: Stored) -> None:
        # what shares the owner's memory costs this client nothing
        # what shares the owner's memory counts all of that memory: it is a copy-on-write clone,
        # which the first write copies whole
        stored.nbytes = tensor_nbytes(stored.value, whole=stored.readonly)
        if stored.grant is not None:
            stored.nbytes += tensor_nbytes(stored.grant.snapshot)
        old = self.objects.get(obj_id)
        grown = stored.nbytes - (old.nbytes if old else 0)
        if self.nbytes + grown > self.max_bytes:
            raise MemoryError(
                f"storing {stored.nbytes} bytes would exceed this client's limit "
                f"of {self.max_bytes} bytes (holding {self.nbytes}); free pointers"
            )
        self.objects[obj_id] = stored
        self.nbytes += grown
        self.failed.pop(obj_id, None)

    def delete(self, obj_id: int) -> None:
        stored = self.objects.pop(obj_id, None)
        if stored is not None:
            self.nbytes -= stored.nbytes
        self.failed.pop(obj_id, None)

    def mark_failed(self, obj_id: int, why: str) -> None:
        """Remember why `obj_id` was never made, to explain later uses of it."""
        self.delete(obj_id)
        self.failed[obj_id] = why
        while len(self.failed) > self._FAILED_KEPT:
            self.failed.popitem(last=False)

    def clear(self) -> None:
        self.objects.clear()
        self.failed.clear()
        self.nbytes = 0
