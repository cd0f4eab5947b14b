"""The owner's release and taint rules: what may leave a node, what may be lent to a client in
the same process, and what counts as (derived from) the owner's data.

Sensitivity follows memory: a result that shares storage with the owner's data is that data,
and any computation on private data taints what it could have written into. The owner-control
issue rewrites this module; keep its surface small. The node (`tether.node.node`) applies these
rules; the request workflow (filing, waiting, spending an accepted request) stays there.
"""

from __future__ import annotations

from typing import Any

import torch

from tether.node.store import Privacy, Store, Stored

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
# Paths that may write a gradient into every tensor of the store.
BACKWARD = {"torch.Tensor.backward", "torch.autograd.backward", "torch.autograd.grad"}
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


def releases(privacy: Privacy, release_derived: bool) -> bool:
    """Whether objects of this privacy leave without the owner's approval."""
    return privacy == PUBLIC or (privacy == DERIVED and release_derived)


def lendable(objects: dict[int, Stored], obj_ids: list[int], release_derived: bool) -> bool:
    """Whether a client in this process may hold the memory of these stored objects itself
    rather than copies (and so see what later commands do to them): only its own data, or
    data derived from private data where such results leave freely (it could fetch every
    later value anyway); never memory shared with the owner's data."""
    for obj_id in obj_ids:
        stored = objects.get(obj_id)
        if stored is None or stored.readonly or not releases(stored.privacy, release_derived):
            return False
    return True


def would_change(path: str, args: tuple, kwargs: dict, protected: list[Any]) -> bool:
    """In-place ops on it, `out=` into it, or wrapping it into something that changes its
    contents later (a Parameter an optimizer steps, a list items are set in)."""
    if path in WRAPPERS or (path.startswith("torch.optim.") and path.count(".") == 2):
        return True
    targets = [args[0]] if args and (path.endswith("_") or path in IN_PLACE) else []
    out = kwargs.get("out")
    targets += list(out) if isinstance(out, list | tuple) else [out] if out is not None else []
    return any(t is p for t in targets for p in protected)


def taint(path: str, inputs: list[Stored], store: Store) -> None:
    """A computation on private data may change what it is given (in-place ops, BatchNorm's
    running statistics, an optimizer's step) and, for backward, every tensor that can hold a
    gradient: all of those become derived data too."""
    touched = store.objects.values() if path in BACKWARD else inputs
    for stored in touched:
        if stored.privacy == PUBLIC and mutable(stored.value):
            stored.privacy = DERIVED


def mutable(value: Any) -> bool:
    return isinstance(value, torch.Tensor | torch.nn.Module | torch.optim.Optimizer | list | dict)


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
    owned = {t.untyped_storage().data_ptr() for t in protected if isinstance(t, torch.Tensor)}
    return any(
        isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in owned for t in results
    ) or any(r is p for r in results for p in protected)


def check_egress(value: Any, depth: int = 0) -> None:
    """Only plain data leaves a node: tensors, scalars, and containers of them. Raises
    TypeError naming what may not leave."""
    if depth > 32:
        raise TypeError("value is nested too deeply to send")
    if isinstance(value, WIRE_LEAVES):
        return
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
