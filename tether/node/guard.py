"""The node's dispatch mode: sensitivity that follows memory, fresh memory zeroed, and each
command's cost bounded before every aten op runs.

Every command a `training` or `strict` node (and a network worker in `open`) runs for a client
runs inside `Guard.command`, a `TorchDispatchMode`. It sees each aten op after torch has
decomposed the Python call, so views, `out=`, in-place ops, composite ops, modules, model
specs and autograd's backward all pass through it; nothing routes around it. Per op:

    level  = max(ambient, level of the storage of every tensor argument)
    writes = arguments annotated (a!) in the op's schema, those torch's `_SchemaInfo` calls
             mutable (the batch-norm family), `UNANNOTATED_WRITERS` (torch is silent about
             them), and in strict mode every tensor argument when level > 0
    charge the command's `Budget` (tether.ops.cost) before running: refused if over it
    run; zero-fill a result the op left uninitialized (the `empty` family)
    fresh results are set to DERIVED (or cleared: a reused address never keeps a stale mark
    unless an input had it); each written storage is raised to DERIVED

Levels live on storages (`torch._C._storage_id`, the StorageImpl address every view shares),
so a view written through another view, a list holding a tensor, a module whose parameter
was assigned, and BatchNorm's running statistics are all caught at egress by `level_of`.
Design and measurements: docs/design/owner-control/README.md, sections 1 and 5.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tether.ops.cost import UNINITIALIZED, Budget

_sid = torch._C._storage_id  # type: ignore[attr-defined]
_SA = torch._C._SchemaArgument
_INPUT = torch._C._SchemaArgType.input
Tensor = torch.Tensor
PUBLIC, DERIVED, PRIVATE = 0, 1, 2  # the values of tether.node.store.Privacy

# Ops that write tensor arguments with no write annotation in their schema and that torch's
# `_SchemaInfo` does not list either (measured with torch 2.13; design §1.1): by position.
_aten = torch.ops.aten
UNANNOTATED_WRITERS: dict[Any, tuple[int, ...]] = {_aten.batch_norm_update_stats.default: (1, 2)}


class _OpInfo:
    """What the guard needs to know of one aten op, learned once from its schema."""

    __slots__ = ("names", "uninitialized", "writes")

    def __init__(self, func: Any) -> None:
        schema = func._schema
        info = torch._C._SchemaInfo(schema)
        self.names = [a.name for a in schema.arguments]
        self.writes = frozenset(
            i
            for i, a in enumerate(schema.arguments)
            if (a.alias_info is not None and a.alias_info.is_write)
            or info.is_mutable(_SA(_INPUT, i))
        ) | frozenset(UNANNOTATED_WRITERS.get(func, ()))
        self.uninitialized = func in UNINITIALIZED


class Guard:
    """One per node: the level of every storage a client's command touched, and the mode
    each command runs in. `strict`: every tensor argument of an op that reads tainted memory
    counts as written (torch does not annotate every write). `taint=False` (a network worker
    in `open`): cost bounds and zeroing only."""

    def __init__(
        self, *, strict: bool = False, taint: bool = True, max_elements: int, max_flops: int
    ) -> None:
        self.strict = strict
        self.taint = taint
        self.max_elements = max_elements
        self.max_flops = max_flops
        self.levels: dict[int, int] = {}
        self._info: dict[Any, _OpInfo] = {}
        self._modes = threading.local()

    # ---- what the node does ------------------------------------------------------------------

    def mark(self, value: Any, level: int) -> None:
        """Set the level of the memory of every tensor in `value` (published data, a Put)."""
        for t in _tensors(value):
            if level:
                self.levels[_sid(t)] = level
            else:
                self.levels.pop(_sid(t), None)

    def level_of(self, tensors: Iterable[Tensor]) -> int:
        """The highest level of the memory these tensors live in. (The wire does not carry a
        tensor's `.grad`: a gradient leaves as an object of its own, judged by its memory.)"""
        levels, level = self.levels, PUBLIC
        for t in tensors:
            found = levels.get(_sid(t), PUBLIC)
            if found > level:
                level = found
                if level == PRIVATE:
                    break
        return level

    @contextmanager
    def command(self, ambient: int = PUBLIC, flops: int | None = None) -> Iterator[_Mode]:
        """Run one command inside the mode: `ambient` is the level of its non-tensor inputs
        (numbers computed from private data); `flops` its budget (the node's `max_flops` by
        default); the mode's `read` says afterwards the highest level the command read."""
        mode = getattr(self._modes, "mode", None)
        if mode is None:
            mode = self._modes.mode = _Mode(self)
        mode.ambient = mode.read = ambient
        mode.budget = Budget(self.max_elements, self.max_flops if flops is None else flops)
        with mode:
            yield mode

    def info(self, func: Any) -> _OpInfo:
        found = self._info.get(func)
        if found is None:
            found = self._info[func] = _OpInfo(func)
        return found


class _Mode(TorchDispatchMode):
    """The guard as a dispatch mode: one per thread (a mode's state is not shared)."""

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard
        self.ambient = self.read = PUBLIC
        self.budget: Budget | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        guard = self.guard
        info = guard.info(func)
        kwargs = kwargs or {}
        if not guard.taint:
            if self.budget is not None:
                self.budget.charge(func, args, kwargs)
            out = func(*args, **kwargs)
            if info.uninitialized:
                out.zero_()
            return out
        levels = guard.levels
        sids = _storage_args(args, kwargs, info.names)
        level = self.ambient
        for _, s in sids:
            found = levels.get(s, PUBLIC)
            if found > level:
                level = found
        if level > self.read:  # before charging: a refusal on private data is quiet too
            self.read = level
        if self.budget is not None:
            self.budget.charge(func, args, kwargs)
        out = func(*args, **kwargs)
        if info.uninitialized:
            out.zero_()
        if level:
            writes = info.writes
            for i, s in sids:
                if (guard.strict or i in writes) and levels.get(s, PUBLIC) < DERIVED:
                    levels[s] = DERIVED
        _mark_results(out, levels, level, {s for _, s in sids})
        return out


def _storage_args(args: tuple, kwargs: dict, names: list[str]) -> list[tuple[int, int]]:
    """(argument position, storage id) of every dense tensor argument, lists included."""
    found = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            found.append((i, _sid(a)))
        elif type(a) in (list, tuple):
            found.extend((i, _sid(x)) for x in a if isinstance(x, Tensor))
    for k, a in kwargs.items():
        if isinstance(a, Tensor):
            found.append((names.index(k) if k in names else -1, _sid(a)))
        elif type(a) in (list, tuple):
            at = names.index(k) if k in names else -1
            found.extend((at, _sid(x)) for x in a if isinstance(x, Tensor))
    return found


def _mark_results(out: Any, levels: dict[int, int], level: int, inputs: set[int]) -> None:
    """A result computed from tainted memory is DERIVED; a fresh one from clean memory clears
    whatever stale mark its (reused) storage address had. Results that alias an input share
    its storage id and so its level already."""
    for t in _tensors(out):
        s = _sid(t)
        if s in inputs:
            continue
        if level:
            levels[s] = DERIVED
        else:
            levels.pop(s, None)


def _tensors(value: Any, depth: int = 0) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif type(value) in (list, tuple) and depth < 4:
        for v in value:
            yield from _tensors(v, depth + 1)
