"""Prototype: storage-level taint tracking and owner-memory protection as one TorchDispatchMode.

    levels[storage_id] = 0 PUBLIC | 1 DERIVED | 2 PRIVATE   (absent = 0)

Per aten op (after the Python API has decomposed to dispatcher ops, so views, out=, in-place,
composite ops and autograd's backward ops are all seen):
  level = max(ambient, level of every tensor argument's storage)
  writes = args annotated (a!) in the schema  U  args torch._C._SchemaInfo calls mutable
           (its 'training ops' list: batch_norm, native_batch_norm, instance_norm, ...)
           U  in strict mode: EVERY tensor argument (torch is silent about some writers:
              batch_norm_update_stats writes running_mean/var with no annotation, no _version
              bump, and SchemaInfo does not list it)
  refuse before running if a write target is a protected (published) storage
  after running: returns that alias an input (schema `Tensor(a)`) -> max(level); fresh
           returns -> SET to level (so a reused StorageImpl address never keeps a stale mark);
           write targets -> max(level)
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_sid = torch._C._storage_id  # the StorageImpl address: shared by every view of one storage
_SA = torch._C._SchemaArgument
_IN = torch._C._SchemaArgType.input
Tensor = torch.Tensor


class WriteRefused(RuntimeError):
    """An op would write into memory that holds the owner's published data."""


class _OpInfo:
    __slots__ = ("writes", "alias_returns", "nargs", "names")

    def __init__(self, op: torch._ops.OpOverload) -> None:
        s = op._schema
        si = torch._C._SchemaInfo(s)
        self.names = [a.name for a in s.arguments]
        self.nargs = len(s.arguments)
        # conservative: SchemaInfo without argument values calls batch_norm's stats mutable
        self.writes = tuple(
            i
            for i, a in enumerate(s.arguments)
            if (a.alias_info is not None and a.alias_info.is_write) or si.is_mutable(_SA(_IN, i))
        )
        self.alias_returns = tuple(r.alias_info is not None for r in s.returns)


class MemoryTaint(TorchDispatchMode):
    """One per node. `strict`: every tensor argument of an op that reads tainted memory counts
    as written. `ambient`: the level of the non-tensor inputs of the current command (Python
    numbers computed from private data), set by the node around each command."""

    def __init__(self, strict: bool = False) -> None:
        super().__init__()
        self.levels: dict[int, int] = {}
        self.protected: set[int] = set()
        self.strict = strict
        self.ambient = 0
        self.read = 0  # max level read during the current command (for non-tensor results)
        self._info: dict = {}

    # ---- what the node does --------------------------------------------------------------
    def publish(self, t: Tensor, level: int = 2) -> None:
        self.levels[_sid(t)] = level
        self.protected.add(_sid(t))

    def level_of(self, t: Tensor) -> int:
        return self.levels.get(_sid(t), 0)

    def clear(self, t: Tensor) -> None:  # a Put: the client's own bytes, fresh memory
        self.levels.pop(_sid(t), None)

    # ---- the hook ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        info = self._info.get(func)
        if info is None:
            info = self._info[func] = _OpInfo(func)
        levels = self.levels
        level = self.ambient
        tensors = []  # (arg index, tensor) of every tensor argument
        for i, a in enumerate(args):
            if type(a) is Tensor or isinstance(a, Tensor):
                tensors.append((i, a))
            elif type(a) in (list, tuple):
                for x in a:
                    if isinstance(x, Tensor):
                        tensors.append((i, x))
        if kwargs:
            names = info.names
            for k, a in kwargs.items():
                if isinstance(a, Tensor):
                    tensors.append((names.index(k), a))
                elif type(a) in (list, tuple):
                    for x in a:
                        if isinstance(x, Tensor):
                            tensors.append((names.index(k), x))
        sids = [(i, _sid(t)) for i, t in tensors]
        for _, s in sids:
            lv = levels.get(s, 0)
            if lv > level:
                level = lv
        writes = info.writes
        if writes and self.protected:
            for i, s in sids:
                if i in writes and s in self.protected:
                    raise WriteRefused(f"{func} would write into the owner's data")
        out = func(*args, **(kwargs or {}))
        if level > self.read:
            self.read = level
        # mark write targets
        if level:
            for i, s in sids:
                if (self.strict or i in writes) and levels.get(s, 0) < level:
                    levels[s] = level
        # mark (or clear) returns
        if isinstance(out, Tensor):
            s = _sid(out)
            if info.alias_returns and info.alias_returns[0]:
                if level > levels.get(s, 0):
                    levels[s] = level
            elif level:
                levels[s] = level
            else:
                levels.pop(s, None)
        elif isinstance(out, (tuple, list)):
            ar = info.alias_returns
            for j, o in enumerate(out):
                if isinstance(o, Tensor):
                    s = _sid(o)
                    if j < len(ar) and ar[j]:
                        if level > levels.get(s, 0):
                            levels[s] = level
                    elif level:
                        levels[s] = level
                    else:
                        levels.pop(s, None)
                elif isinstance(o, (list, tuple)):  # Tensor[] returns (split, unbind, foreach)
                    for x in o:
                        if isinstance(x, Tensor):
                            s = _sid(x)
                            if level > levels.get(s, 0) or not level:
                                if level:
                                    levels[s] = level
                                elif not (j < len(ar) and ar[j]):
                                    levels.pop(s, None)
        return out


class NoOp(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))
