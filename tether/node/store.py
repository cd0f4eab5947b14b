"""What a node holds for one client: objects under client-chosen ids, each with its policy."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch

from tether.errors import LimitError
from tether.ops.guards import MAX_INT_BITS


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


# What any stored object costs at least, against the byte limit: its record and its id.
OBJECT_BYTES = 64
_SCALARS = (int, float, str, bytes, bytearray)
# Items a list of which is sized in one pass at C speed (a tolist() result may have millions).
_FLAT = frozenset((int, float, bool, str, bytes, bytearray, type(None)))
_LARGEST_INT_BYTES = sys.getsizeof(1 << (MAX_INT_BITS - 1))


def value_nbytes(value: Any, whole: bool = False) -> int:
    """Bytes `value` keeps alive: its tensors' data, plus Python's own objects a peer can grow as
    well (ints, text, the slots of lists, tuples and dicts). Refuses ints over MAX_INT_BITS: every
    op that makes one bounds it first, so one here came by a path that did not. `whole`: each
    tensor's whole storage, not just its view of it."""
    if isinstance(value, torch.Tensor):
        view = value.numel() * value.element_size()
        return max(view, value.untyped_storage().nbytes()) if whole else view
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise LimitError(f"a Python int of more than {MAX_INT_BITS:,} bits; this node keeps none")
    if isinstance(value, _SCALARS):
        return sys.getsizeof(value)
    if whole and isinstance(value, list | tuple):
        return sys.getsizeof(value) + sum(value_nbytes(v, whole) for v in value)
    if isinstance(value, list | tuple):
        return sys.getsizeof(value) + _items_nbytes(value)
    if isinstance(value, dict):
        return sys.getsizeof(value) + _items_nbytes(value.keys()) + _items_nbytes(value.values())
    return 0


def _items_nbytes(items: Iterable[Any]) -> int:
    if set(map(type, items)) <= _FLAT:
        sizes = list(map(sys.getsizeof, items))
        if max(sizes, default=0) < _LARGEST_INT_BYTES:  # no int is over the bound
            return sum(sizes)
    return sum(map(value_nbytes, items))


@dataclass
class Store:
    """One client's objects on a node, with the bytes they hold and why recent commands failed.

    Both limits count what a peer can make without end: `max_bytes` of tensor data and Python
    objects, every object at least OBJECT_BYTES; `max_objects` objects (500,000 tiny Puts would
    otherwise hold hundreds of MB of records). Past either, `put` raises."""

    max_bytes: int
    max_objects: int = 100_000
    objects: dict[int, Stored] = field(default_factory=dict)
    nbytes: int = 0
    failed: OrderedDict[int, str] = field(default_factory=OrderedDict)

    _FAILED_KEPT = 1024

    def __len__(self) -> int:
        return len(self.objects)

    def put(self, obj_id: int, stored: Stored) -> None:
        # what shares the owner's memory counts all of that memory: it is a copy-on-write clone,
        # which the first write copies whole
        nbytes = value_nbytes(stored.value, whole=stored.readonly)
        if stored.grant is not None:
            nbytes += value_nbytes(stored.grant.snapshot)
        stored.nbytes = max(nbytes, OBJECT_BYTES)
        old = self.objects.get(obj_id)
        if old is None and len(self.objects) >= self.max_objects:
            raise LimitError(
                f"this client holds {len(self.objects):,} objects, the most this node keeps "
                "for one; free pointers"
            )
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
