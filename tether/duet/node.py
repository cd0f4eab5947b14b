"""The owner's node in a Duet: a strict Node that serves one confirmed scientist.

Knowing the session id lets a client connect (it carries the server's token); it still runs
nothing until it has said hello with its client id and the owner has confirmed that id. The
scientist's commands then run under that client id (so requests and the audit log name it),
and sizes of what the owner holds or derives — tensor shapes, container lengths — are left out
of the replies: they would tell the scientist, say, how many samples a dataset has.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from tether.duet.names import HELLO
from tether.errors import PermissionDeniedError
from tether.node import Node, Requests
from tether.node.policy import Release
from tether.wire import Call, Done, Failure

MAX_HELLO_WAIT = 3600.0
# Hellos waiting for the owner at once: a newer one takes the oldest one's place, so hellos
# from many connections can neither grow without end nor keep a later scientist out.
MAX_WAITING = 8


@dataclass
class _Scientist:
    client_id: str
    confirmed: threading.Event = field(default_factory=threading.Event)  # or woken otherwise
    displaced: bool = False  # a newer hello took its place


class DuetNode(Node):
    """A strict node (release policy "strict", sizes of private results kept from the
    scientist) that runs commands only for the scientist the owner confirmed.
    `confirm=False` confirms the first scientist who says hello."""

    hides_private_sizes = True

    def __init__(
        self, name: str, *, confirm: bool = True, requests: Requests | None = None
    ) -> None:
        super().__init__(name, release=Release.STRICT, requests=requests)
        self.confirm = confirm
        self.left = threading.Event()  # the confirmed scientist disconnected
        self._hellos: dict[str, _Scientist] = {}  # connection -> who said hello on it
        self._scientist: _Scientist | None = None
        self._changed = threading.Condition()
        self._closed = False

    # ---- what the owner does -----------------------------------------------------------------

    def wait_for_hello(self, timeout: float) -> bool:
        """Wait until a scientist has said hello (and waits for confirmation)."""
        with self._changed:
            return self._changed.wait_for(lambda: bool(self._hellos), timeout)

    def confirm_client(self, client_id: str) -> bool:
        """Let the scientist with this client id in; False when no such scientist waits."""
        with self._changed:
            if self._scientist is not None:
                return self._scientist.client_id == client_id
            for scientist in self._hellos.values():
                if scientist.client_id == client_id:
                    self._scientist = scientist
                    scientist.confirmed.set()
                    return True
        return False

    @property
    def waiting(self) -> list[str]:
        """The client ids of the scientists waiting for confirmation (at most MAX_WAITING)."""
        with self._changed:
            return [s.client_id for s in self._hellos.values() if s is not self._scientist]

    def close(self) -> None:
        """The duet ends: scientists still waiting for confirmation are told so at once."""
        with self._changed:
            self._closed = True
            waiting = list(self._hellos.values())
        for scientist in waiting:
            scientist.confirmed.set()

    @property
    def client_id(self) -> str | None:
        """The confirmed scientist's client id."""
        return self._scientist.client_id if self._scientist else None

    # ---- what a connection does --------------------------------------------------------------

    def _admit(self, commands: list, client: str) -> str | list:
        """Hellos and the unconfirmed are answered here; the confirmed scientist's commands run
        under its client id."""
        scientist = self._hellos.get(client)
        if scientist is None or scientist is not self._scientist:
            return [
                self._hello(cmd, client) if _is_hello(cmd) else _unconfirmed() for cmd in commands
            ]
        return scientist.client_id

    def forget(self, client: str) -> None:
        super().forget(client)
        with self._changed:
            scientist = self._hellos.pop(client, None)
        if scientist is not None and scientist is self._scientist:
            super().forget(scientist.client_id)
            self.left.set()

    def _hello(self, cmd: Call, connection: str) -> Done | Failure:
        """Register the client id said on this connection and wait (up to the wait it asks
        for) until the owner confirms it. A connection's commands run in order, so a second
        hello on it comes once the first has ended, and takes its place."""
        if not (
            len(cmd.args) == 2
            and isinstance(cmd.args[0], str)
            and 0 < len(cmd.args[0]) <= 64
            and isinstance(cmd.args[1], int | float)
        ):
            return Failure("TypeError", f"{HELLO} takes a client id and a wait in seconds")
        client_id, wait = cmd.args[0], min(max(float(cmd.args[1]), 0.0), MAX_HELLO_WAIT)
        with self._changed:
            if self._scientist is not None:  # one scientist, one connection, per duet
                return Failure(
                    PermissionDeniedError.__name__, "this duet already has its scientist"
                )
            if len(self._hellos) >= MAX_WAITING:
                oldest = self._hellos.pop(next(iter(self._hellos)))
                oldest.displaced = True
                oldest.confirmed.set()
            scientist = self._hellos[connection] = _Scientist(client_id)
            if not self.confirm:
                self._scientist = scientist
                scientist.confirmed.set()
            self._changed.notify_all()
        scientist.confirmed.wait(wait)
        with self._changed:
            if scientist is self._scientist and not self._closed:
                return Done()
            if self._hellos.get(connection) is scientist:
                del self._hellos[connection]
        if self._closed:
            return Failure(PermissionDeniedError.__name__, "the owner ended the duet")
        if scientist.displaced:
            return Failure(
                PermissionDeniedError.__name__,
                f"{MAX_WAITING} newer scientists said hello while client id {client_id} waited "
                "for the owner's confirmation: join again",
            )
        return Failure(
            PermissionDeniedError.__name__,
            f"the owner did not confirm client id {client_id} within {wait:g} s",
        )


def _is_hello(cmd: Any) -> bool:
    return isinstance(cmd, Call) and cmd.op == HELLO


def _unconfirmed() -> Failure:
    return Failure(
        PermissionDeniedError.__name__,
        "this client is not a confirmed scientist of the duet: join with "
        "sy.join_duet(...) and have the owner confirm your client id",
    )
