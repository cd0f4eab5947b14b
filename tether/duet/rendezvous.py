"""`tether network`: where a Duet's owner and scientist find each other.

The owner registers its session's room (the public half of the session id) with the address of
its worker; a scientist looks the room up and connects to the owner directly or, when it cannot
reach the owner, through this service, which then pipes the bytes of the scientist's websocket
to the owner over a connection the owner opened (so an owner behind NAT is reachable). The
websocket and everything in it stay between the two ends; the service parses only the first
line of each connection (at most 1 KiB, sent within 10 s).

Knowing the room is not enough to use it. Both ends derive a relay key from the session's
secret, and the owner registers a verifier of it:

    relay_key = HKDF-SHA256(ikm=secret, salt=None, info=b"tether-relay " + room, length=32)
    verifier  = SHA-256(relay_key)          (both written as 64 lowercase hex digits)

    REGISTER <room> <host> <port> <verifier>
        owner: answered OK, or ERROR <why> (a room already registered is refused); then the
        service sends RELAY <nonce> for each scientist to relay. The room lives as long as
        this connection.
    LOOKUP <room> <relay_key>
        scientist: answered OWNER <url>, RELAY (connect through the service) or ERROR <why>.
    ATTACH <room> <nonce>
        owner, answering RELAY <nonce>: raw bytes follow.
    GET /relay/<room>/<relay_key> HTTP/1.1
        a scientist's websocket handshake, handed to the owner; else an HTTP 404 (no such
        room or a wrong key), 503 (8 relays already wait for the owner) or 504 (the owner did
        not attach in time).

The service accepts a key when `hmac.compare_digest(SHA-256(key), verifier)`. A line without a
valid key gets the same ERROR whether or not the room exists, and creates no state: a stranger
who knows only the room cannot look the owner up, take its room, or hold a relay slot. A room
has at most 8 relays waiting for the owner to attach (MAX_PENDING_RELAYS). Per address, past 30
failed lines in a minute (MAX_FAILED_LINES), failing lines are answered `ERROR too many failed
requests ...` and a first line must come within a second; a valid key is always served, so a
stranger behind the scientist's address (a NAT) cannot lock them out.

The scientist sends the key itself rather than a proof of it: the service learns the key, which
only opens a rendezvous slot, and the secret cannot be computed from it (HKDF is one-way). The
websocket behind the slot still needs the secret (the worker's token) and the owner's
confirmation. The secret is in the relayed handshake, though: relay through a service you
trust, or serve `wss://`.

Long because the protocol, both of its ends (the service, the owner's registration and the
scientist's lookup) and the relay belong together: one reader of this file knows the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tether.errors import ConnectionLostError

log = logging.getLogger(__name__)

DEFAULT_PORT = 7600
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}"
OPEN_TIMEOUT = 10.0  # seconds to connect, to send the first line, and for an owner to attach
MAX_PENDING_RELAYS = 8  # relays of one room waiting for its owner to attach
MAX_FAILED_LINES = 30  # failed lines per address and minute before it is answered curtly
_FAILURE_WINDOW = 60.0
_CURT_TIMEOUT = 1.0  # seconds an address past MAX_FAILED_LINES has to send its first line
_MAX_ADDRESSES = 4096  # addresses whose failures are remembered (the oldest are forgotten)
_MAX_LINE = 1024
_STREAM_LIMIT = 1 << 20
SHUTDOWN_TIMEOUT = 5.0  # seconds an owner's relays get to finish cancelling when it leaves
_CHUNK = 1 << 20
_ROOM = re.compile(r"[a-z2-7]{8,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def relay_key(room: str, secret: str) -> str:
    """The key that opens `room`'s rendezvous slots, derived from the session's secret."""
    hkdf = HKDF(hashes.SHA256(), length=32, salt=None, info=b"tether-relay " + room.encode())
    return hkdf.derive(secret.encode()).hex()


def verifier(key: str) -> str:
    """What the owner registers for `key` (hex): the service checks keys against it."""
    return hashlib.sha256(bytes.fromhex(key)).hexdigest()


def address(url: str) -> tuple[str, int]:
    """`ws://host:port` to (host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"{url!r} is not a tether network address: use ws://HOST:PORT")
    return parts.hostname, parts.port or DEFAULT_PORT


def relay_url(network_url: str, room: str, key: str) -> str:
    """Where a scientist's websocket reaches the owner of `room` through the service."""
    host, port = address(network_url)
    return f"ws://{host}:{port}/relay/{room}/{key}"


# ---- the service ----------------------------------------------------------------------------


@dataclass
class _Room:
    host: str
    port: int
    owner_ip: str
    verifier: str
    control: asyncio.StreamWriter
    pending: dict[str, asyncio.Future] = field(default_factory=dict)


class _FailedLines:
    """Failed lines per address in the current minute (for the latest _MAX_ADDRESSES)."""

    def __init__(self) -> None:
        self._by_ip: dict[str, tuple[float, int]] = {}  # ip -> (minute's start, failures)

    def over_cap(self, ip: str) -> bool:
        start, failures = self._by_ip.get(ip, (0.0, 0))
        return failures >= MAX_FAILED_LINES and time.monotonic() - start < _FAILURE_WINDOW

    def add(self, ip: str) -> None:
        now = time.monotonic()
        start, failures = self._by_ip.pop(ip, (now, 0))
        if now - start >= _FAILURE_WINDOW:
            start, failures = now, 0
        self._by_ip[ip] = (start, failures + 1)  # last in the dict's order: forgotten last
        if len(self._by_ip) > _MAX_ADDRESSES:
            del self._by_ip[next(iter(self._by_ip))]
        if failures + 1 == MAX_FAILED_LINES:
            log.warning("%s sent %d failed lines within a minute", ip, MAX_FAILED_LINES)


class Rendezvous:
    """The service: rooms, lookups, relays. `port=0` picks a free port (see `.port`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.host = host
        self.port = port
        self.rooms: dict[str, _Room] = {}
        self.failed = _FailedLines()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_STREAM_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("tether network listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for room in list(self.rooms.values()):
                room.control.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        ip = _peer_ip(writer)
        try:
            timeout = _CURT_TIMEOUT if self.failed.over_cap(ip) else OPEN_TIMEOUT
            try:
                head = await asyncio.wait_for(_first_line(reader), timeout)
            except TimeoutError:
                self._refuse(writer, ip, "no request line in time")
                return
            words = head.partition(b"\n")[0].decode("ascii", "replace").split()
            handler = self._handlers().get(words[0] if words else "")
            if handler is None:
                self._refuse(writer, ip, "expected REGISTER, LOOKUP, ATTACH or GET /relay/...")
                return
            await handler(words, head, reader, writer)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.CancelledError,
        ):  # cancelled: the service stops
            writer.close()
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    def _handlers(self) -> dict[str, Callable[..., Awaitable[None]]]:
        return {
            "REGISTER": self._register,
            "LOOKUP": self._lookup,
            "ATTACH": self._attach,
            "GET": self._relay,
        }

    def _refuse(self, writer: asyncio.StreamWriter, ip: str, why: str, status: int = 0) -> None:
        """Answer a failed line (ERROR, or an HTTP `status`), count it, and close."""
        if self.failed.over_cap(ip):
            why = f"too many failed requests from {ip} in the last minute: retry later"
            status = 429 if status else 0
        self.failed.add(ip)
        if status:
            _http_error(writer, status, why)
        else:
            writer.write(f"ERROR {why}\n".encode())
        writer.close()

    def _room(self, room: str, key: str) -> _Room | None:
        """The room, when `key` opens it (the same work whether or not it exists)."""
        entry = self.rooms.get(room)
        expected = entry.verifier if entry else "-" * 64
        offered = verifier(key) if _HEX64.fullmatch(key) else ""
        return entry if hmac.compare_digest(offered, expected) else None

    async def _register(
        self,
        words: list[str],
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        ip = _peer_ip(writer)
        if (
            len(words) != 5
            or not _ROOM.fullmatch(words[1])
            or not words[3].isdigit()
            or not _HEX64.fullmatch(words[4])
        ):
            self._refuse(writer, ip, "usage: REGISTER <room> <host> <port> <verifier>")
            return
        room = words[1]
        if room in self.rooms:
            self._refuse(writer, ip, "this room is taken")
            return
        self.rooms[room] = _Room(words[2], int(words[3]), ip, words[4], writer)
        writer.write(b"OK\n")
        log.info("duet %s registered by %s", room, ip)
        try:
            while await reader.read(_MAX_LINE):  # the owner says nothing more; EOF ends it
                pass
        finally:
            entry = self.rooms.pop(room)
            for future in entry.pending.values():
                future.cancel()
            writer.close()
            log.info("duet %s closed", room)

    async def _lookup(
        self,
        words: list[str],
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        ip = _peer_ip(writer)
        entry = self._room(words[1], words[2]) if len(words) == 3 else None
        if entry is None:
            self._refuse(writer, ip, _NO_ROOM)
            return
        direct = _direct_url(entry, ip)
        writer.write(f"OWNER {direct}\n".encode() if direct else b"RELAY\n")
        await writer.drain()
        writer.close()

    async def _attach(
        self,
        words: list[str],
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        entry = self.rooms.get(words[1]) if len(words) == 3 else None
        future = entry.pending.get(words[2]) if entry else None
        if future is None or future.done():
            self._refuse(writer, _peer_ip(writer), "no relay is waiting for this nonce")
            return
        future.set_result((reader, writer, head.partition(b"\n")[2]))

    async def _relay(
        self,
        words: list[str],
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        ip = _peer_ip(writer)
        path = words[1].partition("?")[0].split("/") if len(words) > 1 else []
        entry = self._room(path[2], path[3]) if len(path) == 4 and path[1] == "relay" else None
        if entry is None:
            self._refuse(writer, ip, _NO_ROOM, 404)
            return
        if len(entry.pending) >= MAX_PENDING_RELAYS:
            _http_error(writer, 503, "the duet's owner is opening other relays: retry soon")
            writer.close()
            return
        nonce = secrets.token_hex(16)
        future = entry.pending[nonce] = asyncio.get_running_loop().create_future()
        entry.control.write(f"RELAY {nonce}\n".encode())
        try:
            owner_reader, owner_writer, owner_said = await asyncio.wait_for(future, OPEN_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            _http_error(writer, 504, "the duet's owner did not open the relay")
            writer.close()
            return
        finally:
            entry.pending.pop(nonce, None)
        owner_writer.write(head)  # the rest of the handshake follows through the pipe
        writer.write(owner_said)
        await splice(reader, writer, owner_reader, owner_writer)


_NO_ROOM = "no duet with this session id is registered here"


async def _first_line(reader: asyncio.StreamReader) -> bytes:
    """The first line and what came with it, at most _MAX_LINE bytes in all (b"" when no whole
    line came): a line without end is refused as soon as it is too long, not waited on."""
    head = b""
    while b"\n" not in head and len(head) < _MAX_LINE:
        if not (chunk := await reader.read(_MAX_LINE - len(head))):
            return b""
        head += chunk
    return head if b"\n" in head else b""


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    return str(writer.get_extra_info("peername", ("?",))[0])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _direct_url(entry: _Room, scientist_ip: str) -> str | None:
    """The owner's address as the scientist may reach it, or None (relay): a loopback address
    only serves a scientist on the owner's machine, a wildcard one means the owner's IP."""
    host = entry.owner_ip if entry.host in ("0.0.0.0", "::", "*") else entry.host
    if _is_loopback(host) and not (_is_loopback(entry.owner_ip) and _is_loopback(scientist_ip)):
        return None
    return f"ws://{f'[{host}]' if ':' in host else host}:{entry.port}"


def _http_error(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    reason = {
        404: "Not Found",
        429: "Too Many Requests",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }[status]
    body = f"tether network: {text}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Pipe bytes both ways until either side closes (then close both)."""
    await asyncio.gather(_pipe(a_reader, b_writer), _pipe(b_reader, a_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


# ---- the owner's and the scientist's ends ---------------------------------------------------


class OwnerLink:
    """The owner's connection to the service: keeps its room registered and, for each scientist
    the service relays, connects the relay to the owner's worker. Runs on its own event loop in
    a background thread. `key`: the room's relay key (see `relay_key`)."""

    def __init__(
        self, network_url: str, room: str, key: str, worker_host: str, worker_port: int
    ) -> None:
        self.network_url = network_url
        self.room = room
        self.verifier = verifier(key)
        self.worker_host = worker_host
        self.worker_port = worker_port
        self.lost = threading.Event()  # the service went away: nobody new can find the duet
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name=f"tether-duet-{room}"
        )
        self._tasks: set[asyncio.Task] = set()
        self._control: asyncio.StreamWriter | None = None
        self._closing = False

    def start(self) -> OwnerLink:
        """Register the room; raises ConnectionLostError naming the service if that fails."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._register(), self._loop).result()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    async def _register(self) -> None:
        host, port = address(self.network_url)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=_STREAM_LIMIT), OPEN_TIMEOUT
            )
            writer.write(
                f"REGISTER {self.room} {self.worker_host} {self.worker_port} "
                f"{self.verifier}\n".encode()
            )
            answer = await asyncio.wait_for(reader.readline(), OPEN_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLostError(_unreachable(self.network_url, exc)) from None
        if answer.strip() != b"OK":
            writer.close()
            raise ConnectionLostError(
                f"the tether network at {self.network_url} refused the "
                f"session: {answer.decode(errors='replace').strip()}"
            )
        self._control = writer
        self._spawn(self._listen(reader))

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                words = line.decode("ascii", "replace").split()
                if len(words) == 2 and words[0] == "RELAY":
                    self._spawn(self._attach(words[1]))
        self.lost.set()
        if not self._closing:
            log.warning(
                "lost the tether network at %s: new scientists cannot find this duet",
                self.network_url,
            )

    async def _attach(self, nonce: str) -> None:
        host, port = address(self.network_url)
        try:
            service = await asyncio.open_connection(host, port, limit=_STREAM_LIMIT)
            service[1].write(f"ATTACH {self.room} {nonce}\n".encode())
            worker = await asyncio.open_connection(
                self.worker_host, self.worker_port, limit=_STREAM_LIMIT
            )
        except OSError as exc:
            log.warning("could not open a relay for a scientist: %s", exc)
            return
        await splice(*service, *worker)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        self._closing = True
        if self._control is not None:
            self._control.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # let them finish cancelling, so none is left pending when the loop stops
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)


def lookup(network_url: str, room: str, key: str, timeout: float = OPEN_TIMEOUT) -> str | None:
    """Ask the service how to reach the owner of `room` (`key`: its relay key): its URL, or
    None to relay."""
    try:
        with socket.create_connection(address(network_url), timeout=timeout) as sock:
            sock.sendall(f"LOOKUP {room} {key}\n".encode())
            reply = sock.makefile("rb").readline(_MAX_LINE).decode("ascii", "replace").strip()
    except OSError as exc:
        raise ConnectionLostError(_unreachable(network_url, exc)) from None
    verb, _, rest = reply.partition(" ")
    if verb == "OWNER":
        return rest
    if verb == "RELAY":
        return None
    raise ConnectionLostError(
        f"the tether network at {network_url}: "
        f"{rest or 'no answer'} (is the owner's launch_duet() running "
        "with this network?)"
    )


def _unreachable(network_url: str, exc: BaseException) -> str:
    return (
        f"no tether network service answers at {network_url} ({exc or type(exc).__name__}):"
        " start one with `tether network`, pass network_url=..., or use loopback=True on one "
        "machine"
    )
