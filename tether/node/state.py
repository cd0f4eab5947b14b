"""Running commands under the torch state they were issued in (`Call.state`).

Grad mode and inference mode are the running thread's own, so setting them for a command
touches nobody else. torch's default dtype is one for the whole process: while a command
issued under another default dtype runs, no other thread may run a command at all (it would
make its tensors in the wrong dtype). `DEFAULT_DTYPE` keeps them apart: commands in the
process's default dtype share it; one that changes it holds it alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch

from tether.wire import torchstate


class DefaultDtypeGate:
    """Many threads run commands in the process's default dtype at once, or one thread runs
    them in another. A thread may enter again while inside (a command on a worker in this
    process may run commands on another: a pointer chain), in the same dtype."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sharing: dict[int, int] = {}  # by thread: how many times it entered to share
        self._holder: int | None = None  # the thread that changed the default dtype
        self._waiting = 0  # threads waiting to change it

    def enter_shared(self, *, blocking: bool = True) -> bool:
        """Run in the process's default dtype as it is (until `leave_shared`). False, without
        waiting, only when not `blocking` and another thread has changed it."""
        me = threading.get_ident()
        with self._lock:
            while self._holder is not None and self._holder != me:
                if not blocking:
                    return False
                self._changed.wait()
            self._sharing[me] = self._sharing.get(me, 0) + 1
        return True

    def leave_shared(self) -> None:
        me = threading.get_ident()
        with self._lock:
            left = self._sharing.pop(me) - 1
            if left:
                self._sharing[me] = left
            elif self._waiting and not self._sharing:
                self._changed.notify_all()

    @contextlib.contextmanager
    def changed_to(self, dtype: torch.dtype) -> Iterator[None]:
        """Run with the process's default dtype set to `dtype`, alone; set back afterwards."""
        me = threading.get_ident()
        with self._lock:
            if me in self._sharing or self._holder == me:
                raise RuntimeError(
                    "a command issued under another default dtype cannot run inside a command"
                )
            self._waiting += 1
            while self._sharing or self._holder is not None:
                self._changed.wait()
            self._waiting -= 1
            self._holder = me
        before = torch.get_default_dtype()
        try:
            torch.set_default_dtype(dtype)
            yield
        finally:
            torch.set_default_dtype(before)
            with self._lock:
                self._holder = None
                self._changed.notify_all()


DEFAULT_DTYPE = DefaultDtypeGate()


class _Shared:
    """Run as one of the threads that keep the process's default dtype."""

    __slots__ = ()

    def __enter__(self) -> None:
        DEFAULT_DTYPE.enter_shared()

    def __exit__(self, *exc: object) -> None:
        DEFAULT_DTYPE.leave_shared()


_SHARED = _Shared()


def running_under(state: int, here: int) -> AbstractContextManager[None]:
    """Run what follows under the torch state `state` codes (see `tether.wire.torchstate`),
    from this thread's state `here` (`torchstate.current()`), and set it (and the process's
    default dtype) back afterwards."""
    if state == here:  # nearly always: a frame run in the state its commands were issued in
        return _SHARED
    return _changed(state, here)


@contextlib.contextmanager
def _changed(state: int, here: int) -> Iterator[None]:
    gate = (
        DEFAULT_DTYPE.changed_to(torchstate.default_dtype(state))
        if (state ^ here) & torchstate.DTYPE_BITS
        else _SHARED
    )
    with (
        gate,
        torch.inference_mode(bool(state & torchstate.INFERENCE)),
        torch.set_grad_enabled(not state & torchstate.NO_GRAD),
    ):
        yield
