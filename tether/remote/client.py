"""The scientist's side of one worker: queues commands, sends them, and reads the replies.

Commands are queued and sent in frames without waiting (object ids are chosen here, so a
command can name the result of one not yet run). Only a sync — `.get()`, a shape not yet
known, `flush()` — waits for replies. A command that failed remotely raises at the next sync,
naming the command, the worker and the original error.

A queued command runs under the torch state it was issued in (grad mode, inference mode,
default dtype), not the one of the moment it is flushed: each Call carries it (`Call.state`),
and the node runs it under that, in this process or over the network.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, overload

import torch

from tether import errors
from tether.remote.pointer import Pointer
from tether.wire import Call, Delete, Done, Failure, Get, Put, Ref, Value, encode_parts, torchstate

Replies = Callable[[], list]
# What the encoder raises for a value the wire format cannot carry.
_UNSENDABLE = (TypeError, ValueError, OverflowError)

# Flush the queue once it holds this many commands, so memory stays bounded in long loops.
MAX_QUEUED = 256

_ERROR_KINDS: dict[str, type[errors.RemoteError]] = {
    "ObjectNotFoundError": errors.ObjectNotFoundError,
    "PermissionDeniedError": errors.PermissionDeniedError,
    "RequestPendingError": errors.RequestPendingError,
    "PoisonedValueError": errors.PoisonedValueError,
}
_LOCAL_KINDS: dict[str, type[errors.TetherError]] = {
    "NotAllowedError": errors.NotAllowedError,
    "LimitError": errors.LimitError,
    "WireError": errors.WireError,
}


class Transport(Protocol):
    """Carries a list of commands to a node; returns a function that waits for the replies.

    `adopted`: the positions of Gets whose values the caller takes as its own (`model.get()`).
    A transport may hand those over without copying them, where the node lends them."""

    def exchange(self, commands: list, adopted: frozenset[int] = frozenset()) -> Replies: ...

    def close(self) -> None: ...


class Client:
    """Talks to one worker for one scientist."""

    def __init__(self, worker: Any, transport: Transport) -> None:
        self.worker = worker
        self.transport = transport
        self._ids = itertools.count(1)
        self._queue: list = []
        self._inflight: deque[tuple[list, Replies]] = deque()
        self._meta: dict[int, list] = {}
        self._values: dict[int, Any] = {}
        self._errors: list[errors.TetherError] = []
        self._released: list[int] = []
        self._sent: set[int] = set()  # tensors sent from here: leaves, whose .grad a get brings
        self._adopted: set[int] = set()  # id() of queued Gets whose values the caller adopts
        self._lock = threading.RLock()

    @property
    def name(self) -> str:
        return str(getattr(self.worker, "id", self.worker))

    def new_id(self) -> int:
        return next(self._ids)

    # ---- queueing ----------------------------------------------------------------------------

    def submit(self, command: Any, *, flush: bool = False) -> None:
        """Queue a command; send the queue now if asked (commands carrying tensors are sent at
        once, so the values sent are the values at the time of the call)."""
        with self._lock:
            self._queue.append(command)
            if flush or len(self._queue) >= MAX_QUEUED:
                self._send_queue()

    def release(self, obj_id: int) -> None:
        """The last pointer to `obj_id` is gone: free it with the next frame (safe in __del__)."""
        self._released.append(obj_id)
        self._meta.pop(obj_id, None)
        self._sent.discard(obj_id)

    def flush(self) -> None:
        """Send what is queued and wait for every reply; raise the first remote error."""
        with self._lock:
            self._send_queue()
            self._drain()
            self._raise_errors()

    def _send_queue(self) -> None:
        if self._released:
            released = []
            while self._released:  # pop() is atomic: __del__ may append from another thread
                released.append(self._released.pop())
            self._queue.append(Delete(released))
        if not self._queue:
            return
        commands, self._queue = self._queue, []
        adopted: frozenset[int] = frozenset()
        if self._adopted:
            adopted = frozenset(i for i, c in enumerate(commands) if id(c) in self._adopted)
            self._adopted.clear()
        try:
            self._inflight.append((commands, self.transport.exchange(commands, adopted)))
        except _UNSENDABLE:
            unsendable = [(c, exc) for c in commands if (exc := _encoding_error(c)) is not None]
            if not unsendable:
                raise
            self._send_all_but(commands, adopted, unsendable)

    def _send_all_but(self, commands: list, adopted: frozenset[int], unsendable: list) -> None:
        """The wire format cannot carry some commands (a value of a type it lacks, an integer
        over 64 bits, a tensor of over 64 dimensions): send the others, so one bad argument
        loses nothing queued around it. Each one left out fails, as a remote failure would:
        the next sync raises it."""
        skipped = {id(c) for c, _ in unsendable}
        adopted_ids = {id(commands[i]) for i in adopted}
        kept = [c for c in commands if id(c) not in skipped]
        if kept:
            kept_adopted = frozenset(i for i, c in enumerate(kept) if id(c) in adopted_ids)
            self._inflight.append((kept, self.transport.exchange(kept, kept_adopted)))
        for command, exc in unsendable:
            self._errors.append(
                self._error(
                    command,
                    Failure("WireError", f"it cannot be sent ({type(exc).__name__}: {exc})"),
                )
            )

    def _drain(self) -> None:
        while self._inflight:
            commands, wait = self._inflight.popleft()
            try:
                replies = wait()
            except errors.TetherError as exc:
                self._inflight.clear()
                raise exc
            self._read(commands, replies)

    def _read(self, commands: list, replies: list) -> None:
        if len(replies) == 1 and len(commands) > 1 and isinstance(replies[0], Failure):
            replies = replies * len(commands)  # the whole frame was refused
        for command, reply in zip(commands, replies, strict=False):
            if type(reply) is Done:
                if reply.meta is not None:
                    out = command.out if type(command) is Call else getattr(command, "id", None)
                    if type(out) is list:
                        self._meta.update(
                            (i, meta) for i, meta in zip(out, reply.meta, strict=False) if meta
                        )
                    elif isinstance(out, int):
                        self._meta[out] = reply.meta
                elif type(command) is Delete:  # what a reply described before it was freed
                    for obj_id in command.ids:
                        self._meta.pop(obj_id, None)
            elif isinstance(reply, Value):
                self._values[id(command)] = reply.value
            elif isinstance(reply, Failure):
                self._errors.append(self._error(command, reply))

    def _error(self, command: Any, failure: Failure) -> errors.TetherError:
        op = {
            Call: lambda c: c.op,
            Put: lambda c: "send",
            Get: lambda c: "get",
            Delete: lambda c: "free",
        }.get(type(command), lambda c: "?")(command)
        text = f"{op} on worker {self.name!r} failed: {failure.kind}: {failure.message}"
        local = _LOCAL_KINDS.get(failure.kind)
        if local is not None:
            return local(text)
        cls = _ERROR_KINDS.get(failure.kind, errors.RemoteError)
        return cls(text, op=op, worker=self.name, kind=failure.kind)

    def _raise_errors(self) -> None:
        if not self._errors:
            return
        first, more = self._errors[0], len(self._errors) - 1
        self._errors.clear()
        if more:
            first.args = (f"{first.args[0]} (and {more} later command(s) failed too)",)
        raise first

    # ---- what pointers ask for ----------------------------------------------------------------

    def put(self, tensor: torch.Tensor) -> Pointer:
        """Send a local tensor (at once, so the value sent is its value now); the pointer to
        it."""
        obj_id = self.new_id()
        self.submit(Put(obj_id, tensor), flush=True)
        self._meta[obj_id] = [
            "tensor",
            list(tensor.shape),
            str(tensor.dtype).removeprefix("torch."),
            tensor.requires_grad,
        ]
        self._sent.add(obj_id)
        return Pointer(self, obj_id)

    def has_grad(self, obj_id: int) -> bool:
        """Whether the object is a tensor sent from here that requires grad: a leaf, whose
        `.grad` a get brings along (other results hold no .grad unless told to retain it)."""
        if obj_id not in self._sent:
            return False
        meta = self._meta.get(obj_id)
        return meta is not None and bool(meta[3])

    @overload
    def call(
        self,
        op: str,
        args: list,
        kwargs: dict | None = None,
        *,
        kind: None,
        flush: bool = False,
        refs: int = 0,
    ) -> None: ...

    @overload
    def call(
        self,
        op: str,
        args: list,
        kwargs: dict | None = None,
        *,
        kind: str = "tensor",
        flush: bool = False,
        refs: int = 0,
    ) -> Pointer: ...

    def call(
        self,
        op: str,
        args: list,
        kwargs: dict | None = None,
        *,
        kind: str | None = "tensor",
        flush: bool = False,
        refs: int = 0,
    ) -> Pointer | None:
        """Queue a remote call; a pointer to its result (None when `kind` is None: no result).
        `refs`: which of `args` are ids of objects on the worker (see `Call.refs`)."""
        state = torchstate.current()
        if kind is None:
            self.submit(Call(op, args, kwargs or {}, None, refs, state), flush=flush)
            return None
        obj_id = self.new_id()
        self.submit(Call(op, args, kwargs or {}, obj_id, refs, state), flush=flush)
        return Pointer(self, obj_id, kind)

    def call_each(
        self,
        op: str,
        args: list,
        kwargs: dict | None,
        count: int,
        *,
        kind: str = "tensor",
        refs: int = 0,
    ) -> list[Pointer]:
        """Queue a remote call that gives `count` results (a tuple: `split`, say); a pointer
        to each, for the price of one command."""
        obj_ids = [self.new_id() for _ in range(count)]
        self.submit(Call(op, args, kwargs or {}, obj_ids, refs, torchstate.current()))
        return [Pointer(self, obj_id, kind) for obj_id in obj_ids]

    def get(
        self,
        obj_ids: list[int],
        *,
        delete: bool,
        name: str = "",
        reason: str = "",
        wait: float = 0.0,
        adopt: bool = False,
    ) -> list:
        """Fetch values in one round trip (and free them remotely when `delete`). Objects that
        need the owner's approval file a request and wait up to `wait` seconds for it.
        `adopt`: the caller takes the values as its own copy of the objects, so a worker in
        this process may hand over the stored tensors themselves instead of copies (see
        `tether.node.policy.lendable`); the caller must not change them in place."""
        with self._lock:
            get = Get(list(obj_ids), name, reason, wait)
            if adopt:
                self._adopted.add(id(get))
            self._queue.append(get)
            self.flush()
            values = self._values.pop(id(get))
            if not (type(values) is list and len(values) == len(obj_ids)):
                raise errors.WireError(
                    f"worker {self.name!r} answered a get of {len(obj_ids)} "
                    f"object(s) with a {type(values).__name__}"
                )
            if delete:  # only once the values are here: a refused get frees nothing
                for obj_id in obj_ids:
                    self.release(obj_id)
            return values

    def meta(self, obj_id: int) -> list:
        """What the worker said of an object (kind, shape, dtype); waits for it if needed."""
        found = self._meta.get(obj_id)
        if found is None:
            self.flush()
            found = self._meta.get(obj_id)
            if found is None:
                raise errors.ObjectNotFoundError(
                    f"worker {self.name!r} holds no object {obj_id} (freed, moved or never made)",
                    op="meta",
                    worker=self.name,
                )
        return found

    def known_meta(self, obj_id: int) -> list | None:
        return self._meta.get(obj_id)

    def close(self) -> None:
        self.transport.close()


def ref(pointer: Pointer) -> Ref:
    return Ref(pointer.id)


def _encoding_error(command: Any) -> Exception | None:
    """Why the wire format cannot carry this command, or None if it can."""
    try:
        encode_parts([command])
    except _UNSENDABLE as exc:
        return exc
    return None


def client_of(worker: Any) -> Client:
    """The client for a worker handle (VirtualWorker, network worker, Duet...)."""
    client = getattr(worker, "client", None)
    if not isinstance(client, Client):
        raise TypeError(
            f"expected a worker (VirtualWorker, WebsocketClientWorker, ...), "
            f"got {type(worker).__name__}"
        )
    return client
