"""Pointer chains (PySyft's pointers to pointers): `x.send(bob).send(alice)` leaves the tensor on
bob and gives alice the pointer to it; the scientist holds a `PointerChain` naming alice's
pointer. Operations on it run where the data is and give chains to their results (alice holds
the new pointers); `.get()` brings alice's pointer back one hop, so `.get().get()` is the tensor.

Only a worker in this process holds a pointer (it has `hold`): a network worker holding one
would open connections to other workers on a scientist's command, with the scientist's
credentials, which no owner agreed to. `ptr.send(network_worker)` is refused; `ptr.move()`
moves the data instead (through here).

This module hooks itself into `tether.remote.pointer` from above (`set_chainer`).
"""

from __future__ import annotations

import operator
from typing import Any

from tether import errors
from tether.remote.pointer import LOCAL_WORKER, Pointer, set_chainer


class PointerChain:
    """A pointer to the pointer (or chain) that worker `location` holds under `id`."""

    __slots__ = ("__weakref__", "_live", "id", "location")

    def __init__(self, location: Any, obj_id: int) -> None:
        self.location = location
        self.id = obj_id
        self._live = True

    def __del__(self) -> None:
        if getattr(self, "_live", False):
            try:  # noqa: SIM105 (as Pointer.__del__)
                self.location.unhold(self.id)
            except Exception:  # at interpreter shutdown there is nothing to free
                pass

    @property
    def id_at_location(self) -> int:
        return self.id

    @property
    def owner(self) -> Any:
        return LOCAL_WORKER

    @property
    def child(self) -> Pointer | PointerChain:
        """What `location` holds: the next pointer of the chain."""
        self._check_live()
        return self.location.held(self.id)

    def get(self) -> Pointer | PointerChain:
        """Bring `location`'s pointer here (one hop); this chain is spent."""
        self._check_live()
        self._live = False
        return self.location.unhold(self.id)

    def remote_get(self) -> Pointer:
        """Bring the data one hop: `location` then holds the tensor itself (it travels through
        here, as every move between workers does); a pointer to it there."""
        return self.get().move(self.location)

    def send(self, worker: Any) -> Any:
        return chain(self, worker)

    def move(self, worker: Any) -> Any:
        """Move what `location` holds to `worker` (a pointer to a pointer stays one)."""
        return chain(self.get(), worker)

    def _check_live(self) -> None:
        if not self._live:
            raise errors.ObjectNotFoundError(
                f"this pointer to object {self.id} on {self.location.id!r} was spent by .get()",
                op="use",
                worker=str(self.location.id),
            )

    def __repr__(self) -> str:
        if not self._live:
            return f"<PointerChain, spent, on {self.location.id} (id {self.id})>"
        return f"<PointerChain on {self.location.id} (id {self.id}) -> {self.child!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        found = getattr(self.child, name)
        if not callable(found):
            return self._wrap(found)
        return lambda *args, **kwargs: self._call(found, args, kwargs)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        first = next(a for a in args if isinstance(a, PointerChain))
        return first._call(func, args, kwargs or {})

    def _call(self, function: Any, args: Any, kwargs: dict) -> Any:
        """Run `function` as `location` would on its pointers; a chain to the result."""
        unwrapped = dict(zip(kwargs, self._unwrap(kwargs.values()), strict=True))
        return self._wrap(function(*self._unwrap(args), **unwrapped))

    def _unwrap(self, values: Any) -> list:
        """The arguments as `location` holds them: its pointers in place of chains there."""
        unwrapped = []
        for value in values:
            if isinstance(value, PointerChain):
                if value.location is not self.location:
                    raise errors.WorkerMismatchError(
                        f"pointers held by {self.location.id!r} and {value.location.id!r} "
                        "are used together; .get() one chain first"
                    )
                value = value.child
            unwrapped.append(value)
        return unwrapped

    def _wrap(self, result: Any) -> Any:
        """A result `location` computed through its pointer: it holds the result's pointer."""
        if isinstance(result, Pointer | PointerChain):
            return PointerChain(self.location, self.location.hold(result))
        return result


def _operator(function: Any, reflected: bool = False) -> Any:
    def method(self: PointerChain, *others: Any) -> Any:
        args = [*others, self] if reflected else [self, *others]
        return self._wrap(function(*self._unwrap(args)))

    return method


for _name in (
    "add sub mul truediv floordiv mod pow matmul and_ or_ xor lshift rshift "
    "eq ne lt le gt ge getitem neg pos abs invert"
).split():
    _function = getattr(operator, _name)
    _dunder = _name.rstrip("_")
    setattr(PointerChain, f"__{_dunder}__", _operator(_function))
    if _name in "add sub mul truediv floordiv mod pow matmul and_ or_ xor lshift rshift".split():
        setattr(PointerChain, f"__r{_dunder}__", _operator(_function, reflected=True))
PointerChain.__hash__ = object.__hash__  # type: ignore[method-assign]


def chain(pointer: Pointer | PointerChain, worker: Any) -> Any:
    """`ptr.send(worker)`: `worker` holds the pointer (it must be in this process); a chain
    naming it there. The pointer given is spent: its object is now `worker`'s to free."""
    if isinstance(pointer, Pointer) and getattr(worker, "client", None) is pointer.client:
        return pointer  # already there
    hold = getattr(worker, "hold", None)
    if hold is None:
        raise errors.NotAllowedError(
            f"a pointer is sent only to a worker in this process (a VirtualWorker), which then "
            f"holds it; {worker!r} would have to connect to other workers on your command. "
            "Use ptr.move(worker) to move the data there instead (see "
            "docs/pysyft-compatibility.md)"
        )
    pointer._check_live()
    held: Pointer | PointerChain
    if isinstance(pointer, Pointer):
        held = Pointer(pointer.client, pointer.id, pointer._kind)
    else:
        held = PointerChain(pointer.location, pointer.id)
    pointer._live = False  # the same object, now named by what `worker` holds
    return PointerChain(worker, hold(held))


set_chainer(chain)
