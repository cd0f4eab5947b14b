"""The owner's release and taint rules: what may leave a node, what may be lent to a client in
the same process, and what counts as (derived from) the owner's data.

Each node has a release policy its owner chooses (`Release`):

- `open` (simulation, tutorials on the scientist's own data; `VirtualWorker`): anything but
  the owner's data itself leaves;
- `training` (a network worker: `tether worker`'s default): the scientist's own data, and what
  the node's routines return (delegated `fit`/`evaluate`, aggregates the owner declared);
  pointer computations on private data give pointers that never leave;
- `strict` (Duet): the scientist's own data; the rest only through an accepted request.

Sensitivity follows memory: a result that shares storage with the owner's data is that data,
and outside `open` the node's `Guard` (tether.node.guard) marks every storage an op writes
with private-derived data. Whether a value leaves is decided in one place, `may_leave`, which
walks the memory of what the reply would carry. The owner's data itself never reaches a client
or a routine: each gets a copy-on-write clone (`cow_view`), so no write through any route
changes it. The node (`tether.node.node`) applies these rules; the request workflow (filing,
waiting, spending an accepted request) stays there.
"""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tether.errors import PoisonedValueError
from tether.node.guard import Guard
from tether.node.store import Grant, Poisoned, Privacy, Store, Stored

_sid = torch._C._storage_id  # type: ignore[attr-defined]


class Release(enum.Enum):
    """A node's release policy, chosen by its owner (see the module's docstring)."""

    OPEN = "open"
    TRAINING = "training"
    STRICT = "strict"

    @classmethod
    def parse(cls, value: Release | str) -> Release:
        """A policy from its name ("open", "training", "strict") or itself."""
        if isinstance(value, Release):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown release policy {value!r}: choose one of {names}") from None


OPEN, TRAINING, STRICT = Release
OPEN_WARNING = (
    "release policy 'open': anything computed from this worker's private data may be fetched "
    "by any client that connects (e.g. (data * 1).get() returns the data). Use it only where "
    "the scientist may see the data; 'training' (the default) releases only fit/evaluate results"
)

# The privacy levels by name: looking a member up on its Enum class costs about 70 ns (Python
# 3.11), and these are compared for every command and, after backward, for every stored object.
PUBLIC, DERIVED, PRIVATE = Privacy

# Calls that read facts about the owner's machine: their results count as the owner's data.
OWNER_FACTS = frozenset(
    {
        "torch.cuda.is_available",
        "torch.cuda.device_count",
        "torch.get_default_dtype",
        "torch.is_grad_enabled",
    }
)
# Paths that change their first argument in place: refused on the owner's data.
IN_PLACE = {"operator.setitem", "tether.assign", "torch.Tensor.backward"}
# Paths that wrap their argument into something whose contents change later.
WRAPPERS = {"torch.nn.Parameter", "builtins.list", "builtins.tuple", "builtins.dict"}
# What may leave a node as data (and containers of these).
WIRE_LEAVES = (
    torch.Tensor,
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    complex,
    slice,
    torch.dtype,
    torch.device,
)


def releases(privacy: Privacy, release: Release) -> bool:
    """Whether objects of this privacy leave without the owner's approval (before `may_leave`
    looks at their memory and at grants)."""
    return privacy == PUBLIC or (privacy == DERIVED and release is OPEN)


def lendable(store: Store, obj_ids: list[int], release: Release) -> bool:
    """Whether a client in this process may hold the memory of these stored objects itself
    rather than copies (and so see what later commands do to them): only on an `open` node
    (which tracks no memory: it could fetch every later value anyway), never the owner's data
    or memory shared with it, never a routine's result. Asked of Gets that succeeded, so
    `may_leave` has judged the values already; this adds only what lending changes."""
    if release is not OPEN:
        return False
    for obj_id in obj_ids:
        stored = store.objects.get(obj_id)
        if (
            stored is None
            or stored.privacy == PRIVATE
            or stored.readonly
            or stored.grant is not None
        ):
            return False
    return True


# ---- egress: the one decision -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `may_leave` decided. `leaves`: without a request; `value`: what leaves then (the
    stored value, or the copy a routine's grant holds); `why`: for one that does not, "private"
    (the owner's data itself) or "derived" (computed from it, or sharing memory with what was)."""

    leaves: bool
    value: Any = None
    why: str = ""


def may_leave(stored: Stored, release: Release, guard: Guard | None = None) -> Verdict:
    """Whether a stored object may leave the node without an accepted request, and what leaves.

    Every release asks this: a Get, the lending of in-process values, a request's status.
    It walks the memory of every tensor the reply would carry (`guard.level_of`: a view of
    memory later written with derived data, a list or a state dict holding it). By policy:
    - `open`: anything but the owner's data itself (no memory is tracked);
    - `training`: the scientist's own data, and what a releasing routine returned (its
      grant's copy, taken when it returned: later changes through pointers do not leave);
    - `strict`: the scientist's own data only.
    What leaves must be plain data (`check_egress`: asked only of what leaves, so that a
    poisoned or unsendable value held back tells nothing by its refusal)."""
    privacy = stored.privacy
    if privacy == PRIVATE:
        return Verdict(False, why="private")
    if release is not OPEN:
        level = guard.level_of(tensors_in(stored.value)) if guard is not None else PUBLIC
        if privacy == DERIVED or level:
            if release is TRAINING and stored.grant is not None:
                check_egress(stored.grant.snapshot)
                return Verdict(True, stored.grant.snapshot)
            return Verdict(False, why="private" if level == PRIVATE else "derived")
    check_egress(stored.value)
    return Verdict(True, stored.value)


def tensors_in(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors a value holds: itself and its `.grad` (which travels with it: a `.get()`
    brings it, as in PySyft), a container's items, a module's parameters and buffers, an
    optimizer's parameters and state. Other objects hold none that can leave."""
    if depth > 32:
        return
    if isinstance(value, torch.Tensor):
        yield value
        if value.is_leaf or value.retains_grad:  # only these hold a .grad (no warning)
            grad = value.grad
            if grad is not None:
                yield grad
    elif isinstance(value, list | tuple):
        for v in value:
            yield from tensors_in(v, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v, depth + 1)
    elif isinstance(value, torch.nn.Module):
        for tensor in (*value.parameters(), *value.buffers()):
            yield from tensors_in(tensor, depth + 1)
    elif isinstance(value, torch.optim.Optimizer):
        for group in value.param_groups:
            yield from tensors_in(group.get("params", ()), depth + 1)
        for state in value.state.values():
            yield from tensors_in(state, depth + 1)


def cow_view(value: Any) -> Any:
    """What a client (or a routine) gets of published data: the same values in copy-on-write
    clones (`Tensor._lazy_clone`, about 1 µs; the first write copies the memory, so no write
    by any op, annotated or not, reaches the owner's tensor). Tuples, lists and string-keyed
    dicts are rebuilt; a dataset (tether's, torch's TensorDataset) is copied with the tensors it
    holds cloned. Other values are handed out as they are: publish data in those forms."""
    if isinstance(value, torch.Tensor):
        try:
            return value._lazy_clone()
        except RuntimeError:  # memory torch cannot share lazily (from numpy, say): a real copy
            return value.detach().clone()
    if isinstance(value, list | tuple):
        return type(value)(cow_view(v) for v in value)
    if isinstance(value, dict):
        return {k: cow_view(v) for k, v in value.items()}
    if isinstance(value, torch.utils.data.Dataset):
        clone = copy.copy(value)
        for name, attribute in vars(value).items():
            if isinstance(attribute, torch.Tensor | list | tuple):
                setattr(clone, name, cow_view(attribute))
        return clone
    return value


def provenance(path: str, inputs: list[Stored], limit: int = 240) -> str:
    """How a result came from the published data, for the owner who is asked to release it:
    the op applied to its inputs' provenance, `torch.Tensor.sum(published['mnist'][0])`.
    Past `limit` characters, the op and the published data it comes from."""
    sources = list(dict.fromkeys(s.provenance for s in inputs if s.provenance))
    text = f"{path}({', '.join(sources)})"
    if len(text) <= limit:
        return text
    keys = sorted(set(re.findall(r"published\[[^\]]*\]", " ".join(sources))))
    return f"{path}(... computed from {', '.join(keys) or 'private data'})"


def grant(routine: str, result: Any) -> Grant:
    """What a releasing routine's result may release: a copy into fresh memory, taken now, so
    nothing done to the stored result later (through pointers or views of it) can leave."""
    return Grant(routine, copied(result))


def copied(value: Any) -> Any:
    """A copy nothing done to `value` later reaches: tensors cloned into fresh memory (keeping
    `requires_grad`), containers rebuilt; other values are immutable plain data."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, list):
        return [copied(v) for v in value]
    if isinstance(value, tuple):
        return tuple(copied(v) for v in value)
    if isinstance(value, dict):
        return {k: copied(v) for k, v in value.items()}
    return value


def would_change(path: str, args: tuple, kwargs: dict, protected: list[Any]) -> bool:
    """In-place ops on it, `out=` into it, or wrapping it into something that changes its
    contents later (a Parameter an optimizer steps, a list items are set in)."""
    if path in WRAPPERS or (path.startswith("torch.optim.") and path.count(".") == 2):
        return True
    targets = [args[0]] if args and (path.endswith("_") or path in IN_PLACE) else []
    out = kwargs.get("out")
    targets += list(out) if isinstance(out, list | tuple) else [out] if out is not None else []
    return any(t is p for t in targets for p in protected)


def result_policy(
    result: Any, privacy: Privacy, protected: list, inputs: list[Stored]
) -> tuple[Privacy, bool]:
    """A result's privacy and whether it is read-only: read-only if it shares the owner's
    memory (`protected`), and private if it is a view of the owner's private data."""
    readonly = bool(protected) and shares_memory(result, protected)
    if readonly and shares_memory(result, [s.value for s in inputs if s.privacy == PRIVATE]):
        privacy = PRIVATE  # a view of the owner's data is that data
    return privacy, readonly


def shares_memory(result: Any, protected: list[Any]) -> bool:
    if not protected:
        return False
    results = result if isinstance(result, list | tuple) else (result,)
    # storage ids, not data pointers: reading a copy-on-write clone's data pointer copies it
    owned = {_sid(t) for t in protected if isinstance(t, torch.Tensor)}
    return any(isinstance(t, torch.Tensor) and _sid(t) in owned for t in results) or any(
        r is p for r in results for p in protected
    )


def check_egress(value: Any, depth: int = 0) -> None:
    """Only plain data leaves a node: tensors, scalars, and containers of them. Raises
    TypeError naming what may not leave."""
    if depth > 32:
        raise TypeError("value is nested too deeply to send")
    if isinstance(value, WIRE_LEAVES):
        return
    if isinstance(value, Poisoned):
        raise PoisonedValueError(
            "the value could not be computed (its cause is in the owner's log)"
        )
    if isinstance(value, list | tuple):
        for v in value:
            check_egress(v, depth + 1)
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for v in value.values():
            check_egress(v, depth + 1)
        return
    hint = "; fetch its state_dict() instead" if isinstance(value, torch.nn.Module) else ""
    raise TypeError(f"a {type(value).__name__} cannot leave the node as data{hint}")
