"""The Node: the one place where remote commands run.

A node takes a frame, decodes it, checks each command against the allowlist and the policies
of the objects it names, runs it on the sending client's store and answers with one reply per
command. Nothing a peer sends can make it raise: every failure becomes a `Failure` reply.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from typing import Any

import torch

from tether.errors import LimitError, NotAllowedError, WireError
from tether.node.policy import OWNER_FACTS
from tether.node.requests import ACCEPTED, PENDING, Request, Requests
from tether.node.store import Privacy, Store, Stored
from tether.ops import PUBLISHED, REQUEST, Entry, resolve
from tether.wire import (
    Call,
    Delete,
    Done,
    Failure,
    Get,
    Parts,
    Put,
    Ref,
    Value,
    decode,
    decode_parts,
    encode_parts,
)
from tether.wire.codec import DTYPE_NAMES

log = logging.getLogger(__name__)
# The privacy levels by name: looking a member up on its Enum class costs about 70 ns (Python
# 3.11), and these are compared for every command and, after backward, for every stored object.
PUBLIC, DERIVED, PRIVATE = Privacy

# Paths that change their first argument in place: refused on the owner's data.
_IN_PLACE = {"operator.setitem", "tether.assign", "torch.Tensor.backward"}
_SCALARS = frozenset((int, float, bool, str, type(None)))
# What `Node.is_quick` lets through: elementwise operators (at most two operands) on tensors of
# at most this many elements, so a quick frame computes at most this squared.
_QUICK_OPS = frozenset(
    f"operator.{name}"
    for name in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "neg",
        "pos",
        "abs",
        "invert",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "xor",
    )
)
_QUICK_ELEMENTS = 4096
_WIRE_LEAVES = (
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


@dataclass(frozen=True)
class Limits:
    """What one client may make a node do. Sizes in bytes; elements of a single result."""

    max_elements: int = 2**28
    max_stored_bytes: int = 8 * 2**30
    max_frame_bytes: int = 2**31


class _Refused(Exception):
    """A command broke a rule; becomes a Failure of the given kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Node:
    """Executes commands for its clients against their stores.

    `release_derived`: whether results computed from private data may be fetched without a
    request. True suits federated learning, where model updates and losses are meant to leave
    (and so, in effect, may anything computed from the data); False is Duet's rule: nothing
    computed from private data leaves without an accepted request, and error texts from
    computations on it are withheld. Requests go to `requests` (the owner's desk).
    """

    # Whether the sizes of what is computed from private data are kept from clients too:
    # left out of descriptions and of refusals (Duet's node).
    hides_private_sizes = False

    def __init__(
        self,
        name: str,
        *,
        limits: Limits | None = None,
        release_derived: bool = True,
        requests: Requests | None = None,
    ) -> None:
        self.name = name
        self.limits = limits or Limits()
        self.release_derived = release_derived
        self.requests = requests or Requests()
        self.published: dict[str, Stored] = {}
        self._stores: dict[str, Store] = {}
        self._released: set[int] = set()  # accepted requests whose object was handed out
        self._lock = threading.Lock()

    # ---- what the owner does -----------------------------------------------------------------

    def publish(
        self,
        key: str,
        value: Any,
        *,
        private: bool = True,
        tags: tuple[str, ...] = (),
        description: str = "",
    ) -> None:
        """Expose `value` to clients under `key` (they reach it with `worker.published(key)`).
        Private values can be computed on but not fetched; nobody may change them in place."""
        privacy = PRIVATE if private else PUBLIC
        self.published[key] = Stored(
            value, privacy, readonly=True, tags=tuple(tags), description=description
        )

    def store(self, client: str = "local") -> Store:
        """The store of one client (made on first use)."""
        with self._lock:
            found = self._stores.get(client)
            if found is None:
                found = self._stores[client] = Store(self.limits.max_stored_bytes)
            return found

    @property
    def clients(self) -> list[str]:
        """The clients that have a store here (one per connection)."""
        with self._lock:
            return list(self._stores)

    def lends(self, client: str, obj_ids: list[int]) -> bool:
        """Whether a client in this process may hold the memory of these stored objects itself
        rather than copies (and so see what later commands do to them): only its own data, or
        data derived from private data where such results leave freely (it could fetch every
        later value anyway); never memory shared with the owner's data."""
        objects = self.store(client).objects
        for obj_id in obj_ids:
            stored = objects.get(obj_id)
            if stored is None or stored.readonly or not self._releases(stored.privacy):
                return False
        return True

    def forget(self, client: str) -> None:
        """Drop everything a client stored (it disconnected)."""
        with self._lock:
            store = self._stores.pop(client, None)
        if store is not None:
            store.clear()

    # ---- what a client does ------------------------------------------------------------------

    def handle(self, frame: bytes | bytearray | memoryview, client: str = "local") -> memoryview:
        """Answer one frame of commands with one frame of replies."""
        return self.answer(frame, client).join()

    def answer(self, frame: bytes | bytearray | memoryview, client: str = "local") -> Parts:
        """`handle`, leaving the reply unjoined for a transport that writes buffers as they are.
        The reply's buffers are views of stored tensors: send them before the next frame runs."""
        try:
            if len(frame) > self.limits.max_frame_bytes:
                raise WireError(
                    f"frame of {len(frame)} bytes is over this node's limit of "
                    f"{self.limits.max_frame_bytes}"
                )
            commands = decode(frame)
        except WireError as exc:
            return encode_parts([Failure("WireError", str(exc))])
        return self.reply(commands, client)

    def handle_parts(
        self, parts: Parts, client: str = "local", adopted: frozenset[int] = frozenset()
    ) -> tuple[Parts, dict[int, Value]]:
        """Answer an unjoined frame from a client in this process with an unjoined reply, and
        what it lends apart (see `execute_lending`). The reply's buffers are views of stored
        tensors: read them before the next command runs."""
        try:
            commands = decode_parts(parts)
        except WireError as exc:
            return encode_parts([Failure("WireError", str(exc))]), {}
        replies, lent = self.execute_lending(commands, client, adopted)
        return self._encoded(replies), lent

    def execute_lending(
        self, commands: list, client: str, adopted: frozenset[int]
    ) -> tuple[list, dict[int, Value]]:
        """`execute`, for a client in this process that takes the values of the Gets at
        positions `adopted` as its own. The Values of those this node lends (`lends`) leave
        the replies (a `Done` stands in) and come back apart, by position, as they are: the
        client then holds the stored tensors' own memory, so nothing need be encoded or
        copied."""
        replies = self.execute(commands, client)
        lent = {
            i: replies[i]
            for i in adopted
            if type(replies[i]) is Value
            and type(commands[i]) is Get
            and self.lends(client, commands[i].ids)
        }
        for i in lent:
            replies[i] = Done()
        return replies, lent

    def reply(self, commands: list, client: str = "local") -> Parts:
        """Run decoded commands; their replies as one unjoined frame."""
        return self._encoded(self.execute(commands, client))

    @staticmethod
    def _encoded(replies: list) -> Parts:
        try:
            return encode_parts(replies)
        except Exception:  # a value the codec cannot carry: that reply becomes a Failure
            return encode_parts([_encodable(reply) for reply in replies])

    def is_quick(self, commands: list, client: str = "local") -> bool:
        """Whether these commands surely finish in microseconds: elementwise operators on
        small tensors, fetching small values the client may have without asking, freeing.
        A server may run such a frame where it stands instead of handing it to a thread."""
        objects = self.store(client).objects
        made: dict[int, tuple[int, Privacy]] = {}  # what earlier commands of the frame make

        def object_size_and_privacy(obj_id: int | None) -> tuple[int, Privacy] | None:
            if type(obj_id) is not int:
                return None
            if obj_id in made:
                return made[obj_id]
            stored = objects.get(obj_id)
            if stored is None or not isinstance(stored.value, torch.Tensor):
                return None
            return stored.value.numel(), stored.privacy

        def size_and_privacy(cmd: Call, i: int) -> tuple[int, Privacy] | None:
            obj_id = _object_id(cmd, i)
            if obj_id is not None:
                return object_size_and_privacy(obj_id)
            return (1, PUBLIC) if type(cmd.args[i]) in _SCALARS else None

        for cmd in commands:
            if isinstance(cmd, Delete):
                continue
            if isinstance(cmd, Get):
                for obj_id in cmd.ids:
                    found = object_size_and_privacy(obj_id)
                    if (
                        cmd.wait
                        or found is None
                        or found[0] > _QUICK_ELEMENTS
                        or not (self._releases(found[1]))
                    ):
                        return False
            elif (
                isinstance(cmd, Call)
                and cmd.op in _QUICK_OPS
                and not cmd.kwargs
                and type(cmd.out) is not list
            ):  # elementwise ops give one result
                inputs = [size_and_privacy(cmd, i) for i in range(len(cmd.args))]
                if None in inputs or max((n for n, _ in inputs), default=1) > _QUICK_ELEMENTS:
                    return False
                if cmd.out is not None:  # broadcasting at most multiplies the sizes
                    derived = any(p > PUBLIC for _, p in inputs)
                    made[cmd.out] = (
                        math.prod(n for n, _ in inputs),
                        DERIVED if derived else PUBLIC,
                    )
            else:
                return False
        return True

    def execute(self, commands: list, client: str = "local") -> list:
        """Run decoded commands in order; one reply each. Never raises."""
        store = self.store(client)
        # Results a later command of this frame frees: the client holds no pointer to them, so
        # their replies carry no description.
        freed = {i for cmd in commands if type(cmd) is Delete for i in cmd.ids}
        return [self._execute_one(cmd, store, client, freed) for cmd in commands]

    def _execute_one(self, cmd: Any, store: Store, client: str, freed: set[int]) -> Any:
        try:
            if isinstance(cmd, Call):
                return self._call(cmd, store, client, freed)
            if isinstance(cmd, Put):
                store.put(cmd.id, Stored(cmd.value))
                return Done(_meta(cmd.value))
            if isinstance(cmd, Get):
                return self._get(cmd, store, client)
            if isinstance(cmd, Delete):
                for obj_id in cmd.ids:
                    store.delete(obj_id)
                return Done()
            return Failure("WireError", f"{type(cmd).__name__} is not a command")
        except _Refused as exc:
            failure = Failure(exc.kind, str(exc))
        except MemoryError as exc:
            failure = Failure(LimitError.__name__, str(exc) or "out of memory")
        except Exception as exc:  # a failing op is reported, never fatal
            failure = Failure(type(exc).__name__, str(exc))
        if isinstance(cmd, Call | Put):
            out = cmd.out if isinstance(cmd, Call) else cmd.id
            for obj_id in () if out is None else out if type(out) is list else (out,):
                store.mark_failed(obj_id, f"{getattr(cmd, 'op', 'put')}: {failure.message}")
        return failure

    def _call(self, cmd: Call, store: Store, client: str, freed: set[int]) -> Done:
        """Run an allowlisted call; store its result under `out`, or each of its results
        under each of a list of outs (a batch loader's `split`: one command, many pointers).
        Results a later command of the frame frees (`freed`) go undescribed."""
        entry = resolve(cmd.op)
        if entry is None:
            if cmd.op == PUBLISHED:
                return self._published(cmd, store)
            if cmd.op == REQUEST:
                return self._request_status(cmd, store, client)
            raise _Refused(NotAllowedError.__name__, _not_allowed(cmd.op))
        inputs: list[Stored] = []
        refs = cmd.refs
        args = tuple(
            [
                self._object(a, store, inputs)
                if refs >> i & 1
                else a
                if type(a) in _SCALARS
                else self._resolve(a, store, inputs)
                for i, a in enumerate(cmd.args)
            ]
        )
        kwargs = (
            {
                k: v if type(v) in _SCALARS else self._resolve(v, store, inputs)
                for k, v in cmd.kwargs.items()
            }
            if cmd.kwargs
            else {}
        )
        if entry.node_limited:
            if "max_elements" in kwargs:
                raise _Refused(
                    NotAllowedError.__name__,
                    f"{entry.path}: max_elements is this node's own limit, not a client's",
                )
            kwargs["max_elements"] = self.limits.max_elements
        privacy, protected, tagged = PUBLIC, [], False  # one pass over the inputs
        for stored in inputs:
            if stored.privacy > privacy:
                privacy = stored.privacy
            tagged = tagged or bool(stored.tags)
            if stored.readonly:
                protected.append(stored.value)
        secret = bool(privacy) and self.hides_private_sizes  # sizes tell of the owner's data
        self._check(entry, args, kwargs, protected, secret)
        privacy = DERIVED if privacy or entry.path in OWNER_FACTS else PUBLIC
        try:
            result = entry.fn(*args, **kwargs)
        except Exception as exc:
            if privacy and not self.release_derived:
                log.info("%s failed on private data for a client: %r", entry.path, exc)
                raise _Refused(
                    type(exc).__name__,
                    f"{entry.path} failed on private data; its "
                    "owner withholds the details (they are in the node's log)",
                ) from None
            raise
        if privacy:
            _taint(entry.path, inputs, store)
        _check_result_size(entry.path, result, self.limits.max_elements, secret)
        out = cmd.out
        if out is None:
            return Done()
        tags = tuple(dict.fromkeys(t for s in inputs for t in s.tags)) if tagged else ()
        if type(out) is int:
            stored = self._stored(result, privacy, protected, inputs, tags)
            _keep(store, out, stored, secret)
            return Done(None if out in freed else self._describe(stored))
        if not (isinstance(result, tuple | list) and len(result) == len(out)):
            got = f"{len(result)} results" if isinstance(result, tuple | list) else "one result"
            raise _Refused("TypeError", f"{entry.path} gave {got}, not the {len(out)} asked for")
        described = []
        for obj_id, item in zip(out, result, strict=True):
            stored = self._stored(item, privacy, protected, inputs, tags)
            _keep(store, obj_id, stored, secret)
            described.append(None if obj_id in freed else self._describe(stored))
        return Done(described)

    @staticmethod
    def _stored(
        result: Any, privacy: Privacy, protected: list, inputs: list[Stored], tags: tuple[str, ...]
    ) -> Stored:
        """A result with its policy: read-only if it shares the owner's memory, and private
        if it is a view of the owner's private data."""
        readonly = bool(protected) and _shares_memory(result, protected)
        if readonly and _shares_memory(result, [s.value for s in inputs if s.privacy == PRIVATE]):
            privacy = PRIVATE  # a view of the owner's data is that data
        return Stored(result, privacy, readonly, tags=tags)

    def _describe(self, stored: Stored) -> list:
        """What the client may know of a stored object without fetching it: kind, shape (or
        length), dtype. A node that hides private sizes keeps kind and dtype (methods resolve
        by them) and leaves out the rest."""
        meta = _meta(stored.value)
        if stored.privacy == PUBLIC or not self.hides_private_sizes:
            return meta
        return [meta[0], None, *meta[2:]] if meta[0] == "tensor" else meta[:2]

    def _published(self, cmd: Call, store: Store) -> Done:
        """What the owner published under a key (or item `index` of it, for a (data, labels)
        pair): the same object, with the owner's policy."""
        args = cmd.args
        if not (
            1 <= len(args) <= 2
            and isinstance(args[0], str)
            and not cmd.kwargs
            and not cmd.refs
            and (len(args) == 1 or type(args[1]) is int)
            and type(cmd.out) is int
        ):
            raise _Refused("TypeError", f"{PUBLISHED} takes a key and an optional item index")
        stored = self.published.get(args[0])
        if stored is None:
            keys = ", ".join(sorted(self.published)) or "nothing"
            raise _Refused(
                "ObjectNotFoundError",
                f"worker {self.name!r} publishes no {args[0]!r} (it publishes: {keys})",
            )
        value = stored.value
        if len(args) == 2:
            if not (isinstance(value, tuple | list) and -len(value) <= args[1] < len(value)):
                raise _Refused(
                    "ObjectNotFoundError",
                    f"{args[0]!r} on worker {self.name!r} has no item {args[1]}",
                )
            value = value[args[1]]
        item = replace(stored, value=value)
        store.put(cmd.out, item)
        return Done(self._describe(item))

    def _request_status(self, cmd: Call, store: Store, client: str) -> Done:
        """File a request for an object (or find this client's last one) without releasing
        anything; the result is its status."""
        obj_id = _object_id(cmd, 0) if cmd.args else None
        if (
            len(cmd.args) != 3
            or obj_id is None
            or type(cmd.out) is not int
            or (not all(isinstance(a, str) for a in cmd.args[1:]))
        ):
            raise _Refused("TypeError", f"{REQUEST} takes a reference, a name and a reason")
        stored = self._lookup(obj_id, store)
        get = Get([obj_id], cmd.args[1], cmd.args[2])
        granted = any(
            r.id not in self._released for r in self.requests.answered(client, obj_id, ACCEPTED)
        )
        status = (
            ACCEPTED
            if self._releases(stored.privacy) or granted
            else self._ask(get, obj_id, stored, client).status
        )
        store.put(cmd.out, Stored(status))
        return Done(_meta(status))

    def _check(
        self, entry: Entry, args: tuple, kwargs: dict, protected: list, secret: bool
    ) -> None:
        """Refuse a call on the wrong type, one that could change the owner's data (the
        `protected` inputs), or one whose result would be too large (saying by how much
        only when the sizes involved are not `secret`)."""
        if entry.self_type is not None and not (args and isinstance(args[0], entry.self_type)):
            got = type(args[0]).__name__ if args else "nothing"
            raise _Refused(
                "TypeError",
                f"{entry.path} needs a {entry.self_type.__name__} as its first argument, got {got}",
            )
        if protected and _would_change(entry.path, args, kwargs, protected):
            raise _Refused(
                NotAllowedError.__name__,
                f"{entry.path} could change the owner's data in place; copy it first",
            )
        if entry.guard is not None:
            try:
                elements = entry.guard(args, kwargs)
            except Exception as exc:
                why = "" if secret else f" ({exc})"
                raise _Refused(
                    LimitError.__name__, f"{entry.path}: cannot bound the size of its result{why}"
                ) from None
            if elements > self.limits.max_elements:
                raise _Refused(
                    LimitError.__name__,
                    _too_big(entry.path, None if secret else elements, self.limits.max_elements),
                )

    def _resolve(self, value: Any, store: Store, inputs: list[Stored]) -> Any:
        """Replace Refs by the objects they name (collecting those objects' policies)."""
        if type(value) in _SCALARS:
            return value
        if type(value) is Ref:
            return self._object(value.id, store, inputs)
        if isinstance(value, list):
            return [self._resolve(v, store, inputs) for v in value]
        if isinstance(value, tuple):
            return tuple(self._resolve(v, store, inputs) for v in value)
        if isinstance(value, dict):
            return {k: self._resolve(v, store, inputs) for k, v in value.items()}
        return value

    def _object(self, obj_id: int, store: Store, inputs: list[Stored]) -> Any:
        """The stored object `obj_id` names (collecting its policy)."""
        stored = store.objects.get(obj_id) if type(obj_id) is int else None
        if stored is None:
            stored = self._lookup(obj_id, store)
        inputs.append(stored)
        return stored.value

    def _lookup(self, obj_id: int, store: Store) -> Stored:
        if type(obj_id) is not int:  # a hostile Call can mark any argument as a reference
            raise _Refused("TypeError", f"{str(obj_id)[:40]!r} is not an object id")
        stored = store.objects.get(obj_id)
        if stored is not None:
            return stored
        why = store.failed.get(obj_id)
        detail = (
            f" (the command that was to make it failed: {why})"
            if why
            else (" (it was freed, moved with .get(), or never sent)")
        )
        raise _Refused(
            "ObjectNotFoundError", f"object {obj_id} is not on worker {self.name!r}{detail}"
        )

    def _get(self, cmd: Get, store: Store, client: str) -> Value:
        """All the values asked for, or (if one may not leave) none: an accepted request is
        spent only when its value leaves."""
        values, released = [], []
        for obj_id in cmd.ids:
            stored = self._lookup(obj_id, store)
            _check_wire_value(stored.value)
            if not self._releases(stored.privacy):
                released.append(self._granted(cmd, obj_id, stored, client).id)
            values.append(stored.value)
        self._released.update(released)
        return Value(values)

    def _releases(self, privacy: Privacy) -> bool:
        """Whether objects of this privacy leave without the owner's approval."""
        return privacy == PUBLIC or (privacy == DERIVED and self.release_derived)

    def _granted(self, cmd: Get, obj_id: int, stored: Stored, client: str) -> Request:
        """The accepted request that releases this object to the client (filing one, and waiting
        for it, if there is none); raise if there is none yet or it was denied."""
        for request in self.requests.answered(client, obj_id, ACCEPTED):
            if request.id not in self._released:
                return request
        request = self._ask(cmd, obj_id, stored, client)
        where = f"object {obj_id} on worker {self.name!r} is private: request {request.id}"
        if request.status == PENDING:
            raise _Refused("RequestPendingError", f"{where} waits for the owner's answer")
        if request.status != ACCEPTED:
            raise _Refused("PermissionDeniedError", f"{where} was {request.status}")
        return request

    def _ask(self, cmd: Get, obj_id: int, stored: Stored, client: str) -> Request:
        """File a request (or find the pending one) and wait up to `cmd.wait` for the answer."""
        pending = self.requests.answered(client, obj_id, PENDING)
        request = (
            pending[0]
            if pending
            else self.requests.submit(
                client, obj_id, cmd.name, cmd.reason, stored.tags, stored.description, stored.value
            )
        )
        if request.status == PENDING and cmd.wait > 0:
            request.wait(cmd.wait)
        return request


_BACKWARD = {"torch.Tensor.backward", "torch.autograd.backward", "torch.autograd.grad"}


def _would_change(path: str, args: tuple, kwargs: dict, protected: list[Any]) -> bool:
    """In-place ops on it, `out=` into it, or wrapping it into something that changes its
    contents later (a Parameter an optimizer steps, a list items are set in)."""
    if path in _WRAPPERS or (path.startswith("torch.optim.") and path.count(".") == 2):
        return True
    targets = [args[0]] if args and (path.endswith("_") or path in _IN_PLACE) else []
    out = kwargs.get("out")
    targets += list(out) if isinstance(out, list | tuple) else [out] if out is not None else []
    return any(t is p for t in targets for p in protected)


_WRAPPERS = {"torch.nn.Parameter", "builtins.list", "builtins.tuple", "builtins.dict"}


def _object_id(cmd: Call, i: int) -> int | None:
    """The id that positional argument `i` of a Call names (as a Ref, or a plain id marked in
    `refs`), or None if it names none."""
    arg = cmd.args[i]
    if cmd.refs >> i & 1:
        return arg if type(arg) is int else None
    return arg.id if type(arg) is Ref else None


def _encodable(reply: Any) -> Any:
    try:
        encode_parts([reply])
    except Exception as exc:
        return Failure("TypeError", f"the result cannot be sent: {type(exc).__name__}: {exc}")
    return reply


def _taint(path: str, inputs: list[Stored], store: Store) -> None:
    """A computation on private data may change what it is given (in-place ops, BatchNorm's
    running statistics, an optimizer's step) and, for backward, every tensor that can hold a
    gradient: all of those become derived data too."""
    touched = store.objects.values() if path in _BACKWARD else inputs
    for stored in touched:
        if stored.privacy == PUBLIC and _mutable(stored.value):
            stored.privacy = DERIVED


def _mutable(value: Any) -> bool:
    return isinstance(value, torch.Tensor | torch.nn.Module | torch.optim.Optimizer | list | dict)


def _not_allowed(op: Any) -> str:
    name = op if isinstance(op, str) else repr(op)
    if isinstance(op, str) and "__" in op:
        return f"{name!r} is refused: dunder names are never remote-callable"
    return f"{name!r} is not in the allowlist (see tether/ops/table.py)"


def _keep(store: Store, obj_id: int, stored: Stored, secret: bool) -> None:
    """Store a result; past the client's byte limit, say by how much only where the result's
    size is not `secret`."""
    try:
        store.put(obj_id, stored)
    except MemoryError:
        if not secret:
            raise
        raise MemoryError(
            f"storing this result would exceed this client's limit of "
            f"{store.max_bytes} bytes; free pointers"
        ) from None


def _too_big(path: str, elements: int | None, limit: int) -> str:
    if elements is None:  # the owner's data would tell its size
        return f"{path} would allocate more than the {limit:,} elements this node allows per result"
    return f"{path} would allocate {elements:,} elements; this node allows {limit:,} per result"


def _check_result_size(path: str, result: Any, limit: int, secret: bool) -> None:
    """Catch views (expand, ...) whose size the guards did not bound, before anything uses them."""
    tensors = result if isinstance(result, list | tuple) else (result,)
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() > limit:
            raise _Refused(
                LimitError.__name__, _too_big(path, None if secret else t.numel(), limit)
            )


def _shares_memory(result: Any, protected: list[Any]) -> bool:
    if not protected:
        return False
    results = result if isinstance(result, list | tuple) else (result,)
    owned = {t.untyped_storage().data_ptr() for t in protected if isinstance(t, torch.Tensor)}
    return any(
        isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in owned for t in results
    ) or any(r is p for r in results for p in protected)


def _meta(value: Any) -> list:
    """What the client may know of a stored object without fetching it: its kind and shape."""
    if isinstance(value, torch.Tensor):
        return [
            "tensor",
            list(value.shape),
            DTYPE_NAMES.get(value.dtype, str(value.dtype)),
            value.requires_grad,
        ]
    if isinstance(value, torch.nn.Module):
        return ["module", type(value).__name__]
    if isinstance(value, torch.optim.Optimizer):
        return ["optimizer", type(value).__name__]
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        return ["scheduler", type(value).__name__]
    if isinstance(value, list | tuple):
        return ["object", type(value).__name__, len(value)]
    return ["object", type(value).__name__]


def _check_wire_value(value: Any, depth: int = 0) -> None:
    """Only plain data leaves a node: tensors, scalars, and containers of them."""
    if depth > 32:
        raise _Refused("TypeError", "value is nested too deeply to send")
    if isinstance(value, _WIRE_LEAVES):
        return
    if isinstance(value, list | tuple):
        for v in value:
            _check_wire_value(v, depth + 1)
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for v in value.values():
            _check_wire_value(v, depth + 1)
        return
    hint = "; fetch its state_dict() instead" if isinstance(value, torch.nn.Module) else ""
    raise _Refused("TypeError", f"a {type(value).__name__} cannot leave the node as data{hint}")
