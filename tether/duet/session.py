"""Starting a Duet: `sy.launch_duet()` on the owner's side, `sy.join_duet(id)` on the
scientist's.

The owner serves a strict node behind tether's websocket server and makes a session id: a
room (how the tether network service finds the owner) and a secret (the server's access token),
so knowing the id is what lets a scientist connect. The scientist connects — directly when it
can reach the owner, else relayed by the service — says hello with a fresh client id, and waits
until the owner types that id in (or, scripted, `confirm=False` lets the first scientist in).
With `loopback=True` both sides meet on one machine through a file only this user can read,
without any service. Every wait has a timeout and says what it waits for.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tether.duet.names import HELLO
from tether.duet.node import DuetNode
from tether.duet.owner import OwnerDuet
from tether.duet.rendezvous import DEFAULT_URL, OwnerLink, lookup, relay_key, relay_url
from tether.duet.scientist import ScientistDuet
from tether.errors import ConnectionLostError, TetherError
from tether.transports.websocket import ServerThread, WebsocketTransport, WorkerServer
from tether.wire import Call

DEFAULT_TIMEOUT = 600.0
PROBE_TIMEOUT = 3.0  # seconds a direct connection may take before the relay is tried
_ROOM_CHARS, _SECRET_CHARS = 16, 32
_ALPHABET = set("abcdefghijklmnopqrstuvwxyz234567")


class SessionError(TetherError):
    """A Duet could not start: nobody joined in time, the client id was not confirmed, ..."""


@dataclass(frozen=True)
class SessionId:
    """`room` finds the owner; `secret` lets the scientist in (lowercase base32, 48 chars)."""

    room: str
    secret: str

    @classmethod
    def new(cls) -> SessionId:
        return cls(_base32(10), _base32(20))

    @classmethod
    def parse(cls, text: str) -> SessionId:
        text = str(text).strip().lower()
        if len(text) != _ROOM_CHARS + _SECRET_CHARS or not set(text) <= _ALPHABET:
            raise ValueError(
                f"{text!r} is not a duet session id: it has "
                f"{_ROOM_CHARS + _SECRET_CHARS} characters a-z and 2-7, as "
                "launch_duet() printed it"
            )
        return cls(text[:_ROOM_CHARS], text[_ROOM_CHARS:])

    def __str__(self) -> str:
        return self.room + self.secret


def _base32(nbytes: int) -> str:
    return base64.b32encode(secrets.token_bytes(nbytes)).decode().lower()


def _say(message: str) -> None:
    print(f"tether duet: {message}", flush=True)


def _network(url: str | None) -> str:
    return url or os.environ.get("TETHER_NETWORK") or DEFAULT_URL


# ---- the owner --------------------------------------------------------------------------------


def launch_duet(
    network_url: str | None = None,
    *,
    loopback: bool = False,
    confirm: bool | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    dp_ledger: str | Path | None = None,
) -> OwnerDuet:
    """Start a Duet as the data owner, print its session id, and wait (up to `timeout` s) for a
    scientist to join; then ask for their client id (`confirm=False`: let them in unasked; the
    default asks unless `loopback`). `network_url`: the tether network service (default
    $TETHER_NETWORK, else ws://127.0.0.1:7600); `host`/`port`: where the owner's worker
    listens (0.0.0.0 to be reachable directly from other machines); `dp_ledger`: the file
    that keeps the scientists' spend of the privacy budgets you grant (`duet.grant`)."""
    confirm = not loopback if confirm is None else confirm
    duet = start_duet(
        network_url, loopback=loopback, confirm=confirm, host=host, port=port, dp_ledger=dp_ledger
    )
    try:
        await_scientist(duet, confirm, timeout)
    except BaseException:
        duet.close()
        raise
    return duet


def start_duet(
    network_url: str | None = None,
    *,
    loopback: bool = False,
    confirm: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
    dp_ledger: str | Path | None = None,
) -> OwnerDuet:
    """launch_duet() without the waiting: serve, and register the session (or leave the
    loopback beacon); the scientist can join from now on."""
    session = SessionId.new()
    node = DuetNode(f"duet-{session.room}", confirm=confirm)
    server = ServerThread(WorkerServer(node, host=host, port=port, token=session.secret)).start()
    duet = OwnerDuet(node, server, str(session), dp_ledger)
    try:
        if loopback:
            duet.add_closer(_write_beacon(session, server.server.port))
            _say(
                "loopback duet: the scientist joins on this machine with "
                "sy.join_duet(loopback=True)"
            )
        else:
            network = _network(network_url)
            key = relay_key(session.room, session.secret)
            link = OwnerLink(network, session.room, key, host, server.server.port)
            duet.add_closer(link.start().close)
            _say(f"session id: {session}")
            _say(f'the scientist joins with sy.join_duet("{session}") (network {network})')
    except BaseException:
        duet.close()
        raise
    return duet


def await_scientist(duet: OwnerDuet, confirm: bool, timeout: float) -> None:
    """Wait for a scientist's hello, then (with `confirm`) ask the owner for their client id."""
    _say(f"waiting up to {timeout:g} s for the scientist to join")
    if not duet.node.wait_for_hello(timeout):
        raise SessionError(f"no scientist joined within {timeout:g} s")
    if confirm:
        _confirm(duet.node)
    _say(f"connected to scientist {duet.client_id}")


def _confirm(node: DuetNode, attempts: int = 3) -> None:
    for _ in range(attempts):
        waiting = len(node.waiting)
        who = "a scientist is" if waiting <= 1 else f"{waiting} scientists are"
        try:
            typed = input(f"tether duet: {who} waiting; enter your scientist's client id: ")
        except EOFError:
            raise SessionError(
                "no client id to confirm the scientist with (stdin is closed); "
                "pass confirm=False to let the first scientist in"
            ) from None
        if node.confirm_client(typed.strip()):
            return
        _say(
            f"no scientist with client id {typed.strip()!r} is waiting: ask the scientist "
            "for theirs"
        )
    raise SessionError(f"no waiting scientist matched the client id after {attempts} tries")


# ---- the scientist ----------------------------------------------------------------------------


def join_duet(
    session_id: str | None = None,
    network_url: str | None = None,
    *,
    loopback: bool = False,
    relay: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ScientistDuet:
    """Join the owner's Duet with the session id it printed, print your client id for the
    owner to confirm, and wait (up to `timeout` s) for that. `relay`: None connects directly
    when the owner is reachable and through the network service otherwise; True always
    relays, False never does. `loopback=True`: join the loopback duet on this machine."""
    if loopback:
        session, transport = _join_loopback(timeout)
        route = "loopback"
    else:
        if session_id is None:
            raise ValueError(
                "join_duet needs the session id the owner's launch_duet() printed "
                "(or loopback=True on the owner's machine)"
            )
        session = SessionId.parse(session_id)
        transport, route = _connect_via_network(session, _network(network_url), relay)
    client_id = secrets.token_hex(8)
    duet = ScientistDuet(transport, transport.worker_id, client_id)
    _say(f"connected to duet {session.room} ({route}); your client id: {client_id}")
    _say(f"send your client id to the data owner, who confirms it; waiting up to {timeout:g} s")
    try:
        duet.client.submit(Call(HELLO, [client_id, float(timeout)], {}, None))
        duet.flush()
    except BaseException:
        duet.close()
        raise
    _say("confirmed: the duet is live")
    return duet


def _connect_via_network(
    session: SessionId, network: str, relay: bool | None
) -> tuple[WebsocketTransport, str]:
    key = relay_key(session.room, session.secret)
    direct = lookup(network, session.room, key) if relay is not True else None
    routes = [] if direct is None else [(direct, "direct")]
    if relay is not False:
        routes.append((relay_url(network, session.room, key), f"relayed by {network}"))
    if not routes:
        raise ConnectionLostError(
            f"the owner of duet {session.room} cannot be reached directly and relay=False"
        )
    failures = []
    for url, route in routes:
        try:
            if route == "direct":
                _probe(url)
            return _open(url, session), route
        except (OSError, TetherError) as exc:
            failures.append(f"{route} ({url}): {exc}")
    raise ConnectionLostError(
        f"cannot reach the owner of duet {session.room}: " + "; ".join(failures)
    )


def _probe(url: str) -> None:
    """Whether the owner's worker accepts connections at all, before trusting a long timeout."""
    parts = urlsplit(url)
    socket.create_connection((parts.hostname, parts.port), timeout=PROBE_TIMEOUT).close()


def _open(url: str, session: SessionId) -> WebsocketTransport:
    transport = WebsocketTransport(url, session.secret)
    if transport.worker_id != f"duet-{session.room}":
        transport.close()
        raise ConnectionLostError(
            f"{url} is worker {transport.worker_id!r}, not duet {session.room}"
        )
    return transport


# ---- loopback ---------------------------------------------------------------------------------


def _beacon() -> Path:
    """Where a loopback owner leaves its address and session id: a folder only this user can
    read (refused when someone else made it)."""
    folder = Path(tempfile.gettempdir()) / f"tether-duet-{getpass.getuser()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SessionError(
            f"{folder} belongs to another user or is readable by others: remove it and try again"
        )
    return folder / "loopback.json"


def _write_beacon(session: SessionId, port: int) -> Callable[[], None]:
    path = _beacon()
    text = json.dumps({"session": str(session), "url": f"ws://127.0.0.1:{port}"})
    staging = path.with_suffix(f".{os.getpid()}")
    staging.write_text(text)
    staging.chmod(0o600)
    staging.replace(path)

    def remove() -> None:
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                path.unlink()

    return remove


def _join_loopback(timeout: float) -> tuple[SessionId, WebsocketTransport]:
    """Wait for a loopback owner's beacon and connect to it (a beacon left by an owner that is
    gone is waited past)."""
    path = _beacon()
    deadline = time.monotonic() + timeout
    told = False
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError, TetherError):
            beacon = json.loads(path.read_text())
            session = SessionId.parse(beacon["session"])
            return session, _open(beacon["url"], session)
        if time.monotonic() >= deadline:
            raise SessionError(
                f"no loopback duet to join after {timeout:g} s: on this machine, "
                "the owner runs sy.launch_duet(loopback=True)"
            )
        if not told:
            _say(
                f"waiting up to {timeout:g} s for a loopback duet (the owner's "
                "sy.launch_duet(loopback=True))"
            )
            told = True
        time.sleep(0.1)
