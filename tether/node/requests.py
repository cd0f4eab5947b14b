"""Requests: how a client asks for an object its policy keeps on the node, and how the owner
answers — by hand (`request.accept()`), or by handlers that match the request's name or the
object's tags. Every decision goes into the audit log. A client waiting for an answer is woken
the moment it is given (an event, not a poll).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

PENDING, ACCEPTED, DENIED, TIMED_OUT = "pending", "accepted", "denied", "timed out"
_DECIDING = threading.Lock()  # an answer, a handler and a timeout may race for one request


@dataclass
class Request:
    """One client asking for one object. `accept()` / `deny()` answer it."""

    id: int
    client: str
    obj_id: int
    name: str
    reason: str
    tags: tuple[str, ...]
    description: str
    value: Any = field(repr=False)
    time: float = field(default_factory=time.time)
    status: str = PENDING
    decided_by: str = ""
    _decided: threading.Event = field(default_factory=threading.Event, repr=False)
    _desk: Requests | None = field(default=None, repr=False)

    def accept(self) -> None:
        self._decide(ACCEPTED, "owner")

    def deny(self) -> None:
        self._decide(DENIED, "owner")

    def _decide(self, status: str, by: str) -> None:
        if not self._settle(status, by):
            raise ValueError(f"request {self.id} was already {self.status} by {self.decided_by}")

    def _settle(self, status: str, by: str) -> bool:
        """Decide, unless it was decided already; whether this call decided it."""
        with _DECIDING:
            if self.status != PENDING:
                return False
            self.status, self.decided_by = status, by
            self.value = None  # the decision is made: the node no longer needs a copy here
        if self._desk is not None:
            self._desk._log(self)
        self._decided.set()
        return True

    def wait(self, timeout: float) -> str:
        """Block until decided or `timeout` seconds pass (then it counts as timed out)."""
        if not self._decided.wait(timeout):
            self._settle(TIMED_OUT, "timeout")
        return self.status


@dataclass
class Handler:
    """Answers matching requests automatically. Matches on the request's name, the object's
    tags, or both; expires `timeout_secs` after it was added (-1: never)."""

    action: str
    name: str | None = None
    tags: tuple[str, ...] = ()
    timeout_secs: float = -1
    print_local: bool = False
    added: float = field(default_factory=time.time)

    def matches(self, request: Request, now: float) -> bool:
        if 0 <= self.timeout_secs < now - self.added:
            return False
        if self.name is not None and self.name != request.name:
            return False
        return not self.tags or bool(set(self.tags) & set(request.tags))

    @property
    def specificity(self) -> int:
        """Name and tags beat name alone, which beats tags alone, which beats a catch-all."""
        return 2 * (self.name is not None) + bool(self.tags)


class Requests:
    """The owner's desk: pending and past requests, handlers, and the audit log."""

    def __init__(self, show: Callable[[str], None] = print) -> None:
        self._requests: list[Request] = []
        self._handlers: list[Handler] = []
        self.audit: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._show = show

    def add_handler(
        self,
        name: str | None = None,
        action: str = "accept",
        *,
        tags: list[str] | tuple[str, ...] = (),
        timeout_secs: float = -1,
        print_local: bool = False,
    ) -> Handler:
        if action not in ("accept", "deny"):
            raise ValueError(f"action must be 'accept' or 'deny', got {action!r}")
        handler = Handler(action, name, tuple(tags), timeout_secs, print_local)
        with self._lock:
            self._handlers.append(handler)
            waiting = [
                r for r in self._requests if r.status == PENDING and self._handler_for(r) is handler
            ]
        for request in waiting:  # requests filed before the handler existed are answered too
            self._apply(handler, request)
        return handler

    def clear_handlers(self) -> None:
        with self._lock:
            self._handlers.clear()

    def submit(
        self,
        client: str,
        obj_id: int,
        name: str,
        reason: str,
        tags: tuple[str, ...],
        description: str,
        value: Any,
    ) -> Request:
        """File a request; a handler that matches decides it at once."""
        request = Request(
            next(self._ids), client, obj_id, name, reason, tags, description, value, _desk=self
        )
        with self._lock:
            self._requests.append(request)
            handler = self._handler_for(request)
        if handler is not None:
            self._apply(handler, request)
        return request

    def _apply(self, handler: Handler, request: Request) -> None:
        value = request.value
        decided = request._settle(
            ACCEPTED if handler.action == "accept" else DENIED,
            f"handler {handler.name or handler.tags or '*'}",
        )
        if decided and handler.print_local:
            self._show(
                f"[tether] request {request.id} {request.name!r} from "
                f"{request.client}: {handler.action} — the value is {value!r}"
            )

    def _handler_for(self, request: Request) -> Handler | None:
        now = time.time()
        matching = [
            (h.specificity, i, h) for i, h in enumerate(self._handlers) if h.matches(request, now)
        ]
        return max(matching)[2] if matching else None  # most specific, then most recent

    def _log(self, request: Request) -> None:
        self.audit.append(
            {
                "request": request.id,
                "time": time.time(),
                "client": request.client,
                "object": request.obj_id,
                "name": request.name,
                "reason": request.reason,
                "decision": request.status,
                "by": request.decided_by,
            }
        )

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
        return [r for r in self._requests if r.status == PENDING]

    def __iter__(self) -> Iterator[Request]:
        return iter(self.pending())

    def __len__(self) -> int:
        return len(self.pending())

    def __getitem__(self, index: int) -> Request:
        return self.pending()[index]

    @property
    def pandas(self) -> Any:
        """Every request as a table: name, reason, requester, object, status, time."""
        import pandas as pd

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
                }
                for r in self._requests
            ]
        )
