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

import torch

from tether.wire import torchstate


class DefaultDtypeGate:
    """Many threads run commands in the process's default dtype at once, or one thread runs
    them in another. A thread already inside passes straight through (a command on one worker
    in this process may run commands on another: a pointer chain)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sharing = 0
        self._holder: int | None = None  # the thread that changed the default dtype
        self._inside = threading.local()

    @contextlib.contextmanager
    def shared(self, *, blocking: bool = True) -> Iterator[bool]:
        """Run in the process's default dtype as it is. Yields whether it may: False (at once)
        only when not `blocking` and another thread has changed the default dtype."""
        if getattr(self._inside, "depth", 0):
            yield True
            return
        with self._changed:
            while self._holder is not None and blocking:
                self._changed.wait()
            entered = self._holder is None
            if entered:
                self._sharing += 1
        if not entered:
            yield False
            return
        self._inside.depth = 1
        try:
            yield True
        finally:
            self._inside.depth = 0
            with self._changed:
                self._sharing -= 1
                if not self._sharing:
                    self._changed.notify_all()

    @contextlib.contextmanager
    def changed_to(self, dtype: torch.dtype) -> Iterator[None]:
        """Run with the process's default dtype set to `dtype`, alone; set back afterwards."""
        if getattr(self._inside, "depth", 0):
            raise RuntimeError(
                "a command issued under another default dtype cannot run inside another command"
            )
        me = threading.get_ident()
        with self._changed:
            while self._sharing or self._holder is not None:
                self._changed.wait()
            self._holder = me
        before = torch.get_default_dtype()
        self._inside.depth = 1
        try:
            torch.set_default_dtype(dtype)
            yield
        finally:
            torch.set_default_dtype(before)
            self._inside.depth = 0
            with self._changed:
                self._holder = None
                self._changed.notify_all()


DEFAULT_DTYPE = DefaultDtypeGate()


@contextlib.contextmanager
def running_under(state: int) -> Iterator[None]:
    """Run what follows under the torch state `state` codes (see `tether.wire.torchstate`),
    and set this thread (and the process's default dtype) back afterwards."""
    here = torchstate.current()
    gate = (
        DEFAULT_DTYPE.changed_to(torchstate.default_dtype(state))
        if (state ^ here) & torchstate.DTYPE_BITS
        else DEFAULT_DTYPE.shared()
    )
    with gate:
        if not (state ^ here) & (torchstate.NO_GRAD | torchstate.INFERENCE):
            yield
            return
        with (
            torch.inference_mode(bool(state & torchstate.INFERENCE)),
            torch.set_grad_enabled(not state & torchstate.NO_GRAD),
        ):
            yield
