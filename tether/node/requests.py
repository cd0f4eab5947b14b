"""Requests: how a client asks for an object its policy keeps on the node, and how the owner
answers — by hand (`request.accept()`), or by handlers that match the request's name or the
object's tags and, optionally, constraints on what it carries. Every decision goes into the
audit log. A client waiting for an answer is woken the moment it is given (an event, not a poll),
and so is whoever watches the desk (`Requests.watch`: the owner's dashboard).

Filing a request copies the value: the owner and every handler look at this snapshot (shown
with its type, dtype, size, digest and provenance), and an accepted request releases the
snapshot, once (`Request.release`), never what the object holds later. A client may keep at
most `max_pending_per_client` requests waiting and one per object, and its open requests'
snapshots hold at most `max_snapshot_bytes`: past that, filing raises `LimitError`.

Long because a request's whole life is here, kept together: filing under the caps, the
snapshot and its digest, handlers and their constraints, the one release, the owner's view.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tether.errors import LimitError, PoisonedValueError
from tether.node.policy import check_egress, copied
from tether.node.store import value_nbytes
from tether.wire.codec import DTYPE_NAMES, tensor_bytes

log = logging.getLogger(__name__)

PENDING, ACCEPTED, DENIED, TIMED_OUT = "pending", "accepted", "denied", "timed out"
MAX_NAME_CHARS, MAX_REASON_CHARS = 256, 4096  # what a request's texts may hold on the desk


@dataclass(repr=False, kw_only=True)
class Request:
    """One client asking for one object. `accept()` / `deny()` answer it; `snapshot` is the
    copy of the value taken when it was filed, `digest` its fingerprint (in the audit log)."""

    id: int
    client: str
    obj_id: int
    name: str
    reason: str
    tags: tuple[str, ...]
    description: str
    snapshot: Any
    digest: str
    provenance: str = ""  # how the value was computed from published data ("" if unknown)
    kind: str = ""  # the snapshot's type, its dtypes, its shape (or length), its elements
    dtype: str = ""
    shape: str = ""
    elements: int = 0
    nbytes: int = 0  # tensor bytes the snapshot holds while it is kept
    time: float = field(default_factory=time.time)
    status: str = PENDING
    decided_by: str = ""
    handler: Handler | None = None  # the handler that decided it, if one did
    released: bool = False
    _desk: Requests
    _decided: threading.Event = field(default_factory=threading.Event)

    @property
    def value(self) -> Any:
        """The snapshot (None once it was dropped: denied, timed out, released)."""
        return self.snapshot

    @property
    def releasable(self) -> bool:
        """Accepted, and its snapshot not yet released (nor dropped for a newer request)."""
        return self.status == ACCEPTED and self.snapshot is not None

    def accept(self) -> None:
        self._decide(ACCEPTED, "owner")

    def deny(self) -> None:
        self._decide(DENIED, "owner")

    def release(self) -> Any:
        """The snapshot the owner saw, once: an accepted request releases exactly that, and
        only one time; then the copy is dropped. Raises ValueError otherwise."""
        return self._desk._release(self)

    def wait(self, timeout: float) -> str:
        """Block until decided or `timeout` seconds pass (then it counts as timed out)."""
        if not self._decided.wait(timeout):
            self._settle(TIMED_OUT, "timeout")
        return self.status

    def _decide(self, status: str, by: str) -> None:
        if not self._settle(status, by):
            raise ValueError(f"request {self.id} was already {self.status} by {self.decided_by}")

    def _settle(self, status: str, by: str, handler: Handler | None = None) -> bool:
        """Decide, unless it was decided already; whether this call decided it."""
        if not self._desk._settle(self, status, by, handler):
            return False
        self._decided.set()
        return True

    def __repr__(self) -> str:
        size = f"{self.shape}, " if self.shape else ""
        line = (
            f"<Request {self.id} {self.name!r} from {self.client}: {self.status}"
            f"{' by ' + self.decided_by if self.decided_by else ''} — {self.kind} {self.dtype} "
            f"{size}{self.elements} element{'s' * (self.elements != 1)}, "
            f"digest {self.digest[:12]}, provenance {self.provenance or 'unknown'}"
        )
        handler = self.handler
        if handler is not None and handler.action == "accept" and not handler.constrained:
            line += " (an unconstrained handler: it accepts any value under this name)"
        return line + ">"

    def facts(self) -> dict[str, Any]:
        """What it carries, as the audit log and the owner's table show it."""
        return {
            "type": self.kind,
            "dtype": self.dtype,
            "shape": self.shape,
            "elements": self.elements,
            "digest": self.digest,
            "provenance": self.provenance,
        }


@dataclass
class Handler:
    """Answers matching requests automatically. Matches on the request's name, the object's
    tags, or both; expires `timeout_secs` after it was added (-1: never). It applies only when
    every constraint it has holds on the request's snapshot (see `Requests.add_handler`)."""

    action: str
    name: str | None = None
    tags: tuple[str, ...] = ()
    timeout_secs: float = -1
    print_local: bool = False
    max_elements: int | None = None
    dtype: torch.dtype | type | None = None
    provenance: str | Callable[[str], bool] | None = None
    predicate: Callable[[Any], bool] | None = None
    added: float = field(default_factory=time.time)

    @property
    def constrained(self) -> bool:
        return any(
            c is not None for c in (self.max_elements, self.dtype, self.provenance, self.predicate)
        )

    def matches(self, request: Request, now: float) -> bool:
        if 0 <= self.timeout_secs < now - self.added:
            return False
        if self.name is not None and self.name != request.name:
            return False
        return not self.tags or bool(set(self.tags) & set(request.tags))

    def holds(self, request: Request, snapshot: Any) -> bool:
        """Whether every constraint holds on this snapshot (an owner's callable that raises
        does not hold)."""
        if self.max_elements is not None and request.elements > self.max_elements:
            return False
        if self.dtype is not None and not all(_has_dtype(v, self.dtype) for v in _leaves(snapshot)):
            return False
        try:
            if isinstance(self.provenance, str) and self.provenance != request.provenance:
                return False
            if callable(self.provenance) and not self.provenance(request.provenance):
                return False
            return self.predicate is None or bool(self.predicate(snapshot))
        except Exception:
            log.exception("a request handler's constraint raised: request %s waits", request.id)
            return False

    @property
    def specificity(self) -> tuple[int, bool]:
        """Name and tags beat name alone, which beats tags alone, which beats a catch-all; at
        each of those, a handler with constraints beats one without."""
        return 2 * (self.name is not None) + bool(self.tags), self.constrained


class Requests:
    """The owner's desk: pending and past requests, handlers, and the audit log."""

    def __init__(
        self,
        show: Callable[[str], None] = print,
        *,
        max_pending_per_client: int = 256,
        max_snapshot_bytes: int = 2**30,
    ) -> None:
        self.max_pending_per_client = max_pending_per_client
        self.max_snapshot_bytes = max_snapshot_bytes
        self._requests: list[Request] = []
        self._handlers: list[Handler] = []
        self.audit: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._show = show
        self._waiting: dict[tuple[str, int], Request] = {}  # pending, by (client, object)
        self._kept: dict[tuple[str, int], Request] = {}  # accepted, snapshot not yet released
        self._pending_count: Counter[str] = Counter()
        self._held_bytes: Counter[str] = Counter()  # by client: its snapshots' tensor bytes
        self._warned = False
        self._watchers: list[Callable[[], None]] = []

    def watch(self, changed: Callable[[], None]) -> Callable[[], None]:
        """Call `changed()` after every change on the desk: a request filed, decided or
        released, a handler added or cleared, a note logged. It runs in the thread that made
        the change, outside the desk's lock, so it must be quick (wake something up). Returns
        the function that stops the watching."""
        with self._lock:
            self._watchers.append(changed)

        def stop() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._watchers.remove(changed)

        return stop

    @property
    def handlers(self) -> list[Handler]:
        """The handlers in force, oldest first."""
        with self._lock:
            return list(self._handlers)

    def _changed(self) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for changed in watchers:
            try:
                changed()
            except Exception:
                log.exception("a watcher of the requests desk raised")

    def add_handler(
        self,
        name: str | None = None,
        action: str = "accept",
        *,
        tags: list[str] | tuple[str, ...] = (),
        timeout_secs: float = -1,
        print_local: bool = False,
        max_elements: int | None = None,
        dtype: torch.dtype | type | None = None,
        provenance: str | Callable[[str], bool] | None = None,
        predicate: Callable[[Any], bool] | None = None,
    ) -> Handler:
        """Answer requests whose `name` (the scientist chooses it) and/or object `tags` match,
        with `action` "accept" or "deny" — but only when every constraint given holds on the
        request's snapshot; otherwise the handler does not apply and the request waits for
        you (it is never denied for it):

        - `max_elements`: at most this many elements (a tensor's numel; a number counts 1,
          a string its length; containers add theirs up, a dict's keys included). Where the
          size depends on the data, whether it fits is a bit the scientist sees too;
        - `dtype`: every tensor in it has this torch dtype, or every value in it is of this
          Python type (`int`: ints, not bools, not tensors);
        - `provenance`: the chain of ops from published data to the value, as shown on the
          request ("" where the node does not know it): this exact string, or a callable on
          it that says whether it fits;
        - `predicate`: a callable on the snapshot that says whether it fits. It reads the value,
          so it is a channel: the scientist learns whether it held (the request was
          answered or not). Prefer the structural constraints above.

        The name is the scientist's choice, so an accept handler without constraints
        accepts anything filed under that name, the raw data included; the first one added
        logs a warning. Say what it accepts: `add_handler(name="train_size",
        action="accept", max_elements=1, dtype=int)`. Of the handlers that apply, the most
        specific answers (`Handler.specificity`), then the newest."""
        if action not in ("accept", "deny"):
            raise ValueError(f"action must be 'accept' or 'deny', got {action!r}")
        if max_elements is not None and (type(max_elements) is not int or max_elements < 0):
            raise TypeError(f"max_elements must be an int >= 0, got {max_elements!r}")
        if dtype is not None and not isinstance(dtype, torch.dtype | type):
            raise TypeError(f"dtype must be a torch dtype or a Python type, got {dtype!r}")
        if provenance is not None and not (isinstance(provenance, str) or callable(provenance)):
            raise TypeError("provenance must be a string or a callable on one")
        if predicate is not None and not callable(predicate):
            raise TypeError("predicate must be a callable on the request's value")
        handler = Handler(
            action,
            name,
            tuple(tags),
            timeout_secs,
            print_local,
            max_elements,
            dtype,
            provenance,
            predicate,
        )
        if action == "accept" and not handler.constrained and not self._warned:
            self._warned = True
            log.warning(
                "tether: the accept handler %r has no constraints: it accepts any value "
                "filed under that name, the raw data included (add max_elements=, dtype=, "
                "provenance=)",
                name or tags or "*",
            )
        with self._lock:
            self._handlers.append(handler)
            waiting = list(self._waiting.values())
        self._changed()
        for request in waiting:  # requests filed before the handler existed are answered too
            if self._handler_for(request) is handler:
                self._apply(handler, request)
        return handler

    def clear_handlers(self) -> None:
        with self._lock:
            self._handlers.clear()
        self._changed()

    def submit(
        self,
        client: str,
        obj_id: int,
        name: str,
        reason: str,
        tags: tuple[str, ...],
        description: str,
        value: Any,
        *,
        provenance: str = "",
        accepted_by: str = "",
    ) -> Request:
        """File a request, holding a snapshot of `value`; a handler that matches decides it
        at once. This client's pending request for this object, if it has one, is returned
        instead. Raises LimitError past the caps (they count only the client's own requests,
        and the message names no size of the value). `accepted_by`: the request is accepted
        as it is filed, by that standing approval of the owner's (a privacy budget a routine
        charged: see `Approved`), and no handler sees it; a pending request for the object is
        then an error, never the request returned."""
        if len(name) > MAX_NAME_CHARS or len(reason) > MAX_REASON_CHARS:
            raise LimitError(
                f"a request's name is at most {MAX_NAME_CHARS} characters and its reason "
                f"at most {MAX_REASON_CHARS}"
            )
        with contextlib.suppress(PoisonedValueError):  # the owner sees the cause; a refusal
            check_egress(value)  # here would tell the scientist the value is poisoned
        key, nbytes = (client, obj_id), value_nbytes(value)
        with self._lock:
            found = self._admit(key, nbytes)
        if found is not None:
            return _unless_approving(found, accepted_by)
        snapshot = copied(value)  # nothing done to the value later reaches it
        request = Request(
            id=0,
            client=client,
            obj_id=obj_id,
            name=name,
            reason=reason,
            tags=tuple(tags),
            description=description,
            snapshot=snapshot,
            digest=digest(snapshot),
            provenance=provenance,
            kind=type(snapshot).__name__,
            dtype=", ".join(sorted({_dtype_name(v) for v in _leaves(snapshot)})),
            shape=_shape(snapshot),
            elements=_elements(snapshot),
            nbytes=nbytes,
            _desk=self,
        )
        with self._lock:  # checked again: the copy was taken outside the lock
            found = self._admit(key, nbytes)
            if found is not None:
                return _unless_approving(found, accepted_by)
            request.id = next(self._ids)
            self._requests.append(request)
            self._waiting[key] = request
            self._pending_count[client] += 1
            self._held_bytes[client] += nbytes
            superseded = self._kept.pop(key, None)  # a new request: the last one was spent
            if superseded is not None:
                self._drop(superseded)
        self._changed()
        if accepted_by:
            request._settle(ACCEPTED, accepted_by)
            return request
        handler = self._handler_for(request)
        if handler is not None:
            self._apply(handler, request)
        return request

    def _admit(self, key: tuple[str, int], nbytes: int) -> Request | None:
        """Under the lock: the pending request for `key`, or None when a new one may be filed;
        raises past the caps."""
        found = self._waiting.get(key)
        if found is not None:
            return found
        client = key[0]
        if self._pending_count[client] >= self.max_pending_per_client:
            raise LimitError(
                f"{self.max_pending_per_client} requests of this client already wait for the "
                "owner's answer (the most a node keeps per client): wait for answers first"
            )
        if self._held_bytes[client] + nbytes > self.max_snapshot_bytes:
            raise LimitError(
                "the values of this client's open requests (waiting, or accepted and not yet "
                f"fetched) would hold more than {self.max_snapshot_bytes} bytes on this node: "
                "fetch or wait for answers first"
            )
        return None

    def _settle(self, request: Request, status: str, by: str, handler: Handler | None) -> bool:
        with self._lock:
            if request.status != PENDING:
                return False
            request.status, request.decided_by, request.handler = status, by, handler
            key = (request.client, request.obj_id)
            if self._waiting.get(key) is request:
                del self._waiting[key]
            self._pending_count[request.client] -= 1
            if status == ACCEPTED:
                self._kept[key] = request
            else:
                self._drop(request)  # the decision is made: the node needs no copy any more
            self._log(request)
        self._changed()
        return True

    def _release(self, request: Request) -> Any:
        with self._lock:
            if request.status != ACCEPTED:
                raise ValueError(f"request {request.id} was {request.status}: nothing to release")
            if request.snapshot is None:
                why = "was released already" if request.released else "gave way to a newer one"
                raise ValueError(f"request {request.id} {why}")
            key = (request.client, request.obj_id)
            if self._kept.get(key) is request:
                del self._kept[key]
            snapshot = request.snapshot
            self._drop(request)
            request.released = True
        self._changed()
        return snapshot

    def _drop(self, request: Request) -> None:
        """Under the lock: forget the request's snapshot and the bytes it held."""
        request.snapshot = None
        self._held_bytes[request.client] -= request.nbytes
        request.nbytes = 0

    def _apply(self, handler: Handler, request: Request) -> None:
        value = request.snapshot
        decided = request._settle(
            ACCEPTED if handler.action == "accept" else DENIED,
            f"handler {handler.name or handler.tags or '*'}",
            handler,
        )
        if decided and handler.print_local:
            self._show(
                f"[tether] request {request.id} {request.name!r} from "
                f"{request.client}: {handler.action} — the value is {value!r}"
            )

    def _handler_for(self, request: Request) -> Handler | None:
        """The most specific (then the most recent) handler that matches and whose
        constraints hold. The owner's callables run outside the desk's lock."""
        now, snapshot = time.time(), request.snapshot
        with self._lock:
            candidates = [(h.specificity, i, h) for i, h in enumerate(self._handlers)]
        for _, _, handler in sorted(candidates, key=lambda c: c[:2], reverse=True):
            if handler.matches(request, now) and handler.holds(request, snapshot):
                return handler
        return None

    def _log(self, request: Request) -> None:
        self.audit.append(
            {
                "request": request.id,
                "time": time.time(),
                "client": request.client,
                "object": request.obj_id,
                "name": request.name,
                "reason": request.reason,
                **request.facts(),
                "decision": request.status,
                "by": request.decided_by,
            }
        )

    def note(self, client: str, name: str, reason: str, decision: str) -> None:
        """Log an owner's decision that answers no request (a privacy budget granted)."""
        with self._lock:
            self.audit.append(
                {
                    "request": None,
                    "time": time.time(),
                    "client": client,
                    "name": name,
                    "reason": reason,
                    "decision": decision,
                    "by": "owner",
                }
            )
        self._changed()

    # ---- the owner's view ---------------------------------------------------------------------

    def matching(self, client: str, obj_id: int, status: str) -> list[Request]:
        """This client's requests for this object that have this status (any status: pending
        ones too)."""
        with self._lock:
            return [
                r
                for r in self._requests
                if r.client == client and r.obj_id == obj_id and r.status == status
            ]

    def pending(self) -> list[Request]:
        with self._lock:
            return sorted(self._waiting.values(), key=lambda r: r.id)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.pending())

    def __len__(self) -> int:
        return len(self.pending())

    def __getitem__(self, index: int) -> Request:
        return self.pending()[index]

    def __repr__(self) -> str:
        pending = self.pending()
        return "\n".join([f"{len(pending)} pending request(s)", *map(repr, pending)])

    @property
    def pandas(self) -> Any:
        """Every request as a table: name, reason, requester, object, status, time, and what it
        carries (type, dtype, shape, elements, digest, provenance)."""
        import pandas as pd

        with self._lock:
            requests = list(self._requests)
        return pd.DataFrame(
            [
                {
                    "id": r.id,
                    "name": r.name,
                    "reason": r.reason,
                    "requester": r.client,
                    "object": r.obj_id,
                    "status": r.status,
                    "time": pd.Timestamp(r.time, unit="s"),
                    **r.facts(),
                }
                for r in requests
            ]
        )


@dataclass(frozen=True)
class Approved:
    """What an approving routine returns (`tether.ops.register(..., approves=True)`): `value`,
    released under the owner's standing approval that the routine enforced; the node files it
    as a request named `name`, with `reason` (what it cost), accepted `by` that approval."""

    value: Any
    name: str
    reason: str
    by: str


def _unless_approving(found: Request, accepted_by: str) -> Request:
    if accepted_by:
        raise ValueError(
            f"object {found.obj_id} has a request waiting for the owner's answer: an approved "
            "release goes to a new object id"
        )
    return found


# ---- what a snapshot is -------------------------------------------------------------------------


def digest(value: Any) -> str:
    """A fingerprint of a snapshot: blake2b over each tensor's dtype, shape and bytes, each
    other value's type and repr, and the containers' shapes around them."""
    hasher = hashlib.blake2b(digest_size=16)

    def feed(piece: bytes | memoryview) -> None:  # length-prefixed: pieces cannot run together
        view = memoryview(piece)
        hasher.update(view.nbytes.to_bytes(8, "little"))
        hasher.update(view)

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            feed(f"tensor {_dtype_name(v)} {tuple(v.shape)}".encode())
            feed(tensor_bytes(v))
        elif isinstance(v, list | tuple | dict):
            feed(f"{type(v).__name__} {len(v)}".encode())
            for item in v.items() if isinstance(v, dict) else v:
                walk(item)
        else:
            feed(f"{type(v).__name__} {v!r}".encode())

    walk(value)
    return hasher.hexdigest()


def _leaves(value: Any) -> Iterator[Any]:
    """The tensors and other values in a snapshot, a dict's keys included."""
    if isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(k)
            yield from _leaves(v)
    else:
        yield value


def _elements(value: Any) -> int:
    """A tensor's numel, a string's length, 1 for any other value, summed over containers."""
    total = 0
    for leaf in _leaves(value):
        if isinstance(leaf, torch.Tensor):
            total += leaf.numel()
        elif isinstance(leaf, str | bytes):
            total += len(leaf)
        elif leaf is not None:
            total += 1
    return total


def _has_dtype(leaf: Any, dtype: torch.dtype | type) -> bool:
    if isinstance(dtype, torch.dtype):
        return isinstance(leaf, torch.Tensor) and leaf.dtype == dtype
    return type(leaf) is dtype


def _dtype_name(leaf: Any) -> str:
    if isinstance(leaf, torch.Tensor):
        return DTYPE_NAMES.get(leaf.dtype, str(leaf.dtype))
    return type(leaf).__name__


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, list | tuple | dict):
        return f"{len(value)} items"
    return ""
