"""A Node behind a websocket endpoint: what `tether worker` runs.

One asyncio loop (uvloop's when installed) accepts connections, speaks the websocket protocol
and enforces the limits; commands run in a thread pool, so a slow command never stalls the other
clients (or the pings that tell a waiting client its worker is alive). Each connection is its
own client of the Node, with its own store: it sees only its own objects and what the owner
published, its frames run in the order they came, and its objects are freed when it disconnects.

Long because it is one end of the protocol, whole: handshake, token, limits, framing, the
queue of frames and the replies written as they are; the client end is `transport.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import math
import secrets
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request
from websockets.server import ServerProtocol

from tether.errors import WireError
from tether.node import Node
from tether.node.quick import answer_on_loop
from tether.transports.websocket import frames
from tether.transports.websocket.frames import WORKER_HEADER, ProtocolViolation, Reader
from tether.wire import Parts, decode

log = logging.getLogger(__name__)
# The websockets library logs every handshake at INFO; this module logs each connection once.
_handshake_log = log.getChild("handshake")
_handshake_log.setLevel(logging.WARNING)

_MAX_REQUEST = 16 * 1024
_SMALL_WRITE = 64 * 1024
_WRITE_CHUNK = 1 << 20
_INLINE_BYTES = 4096  # frames up to this size are decoded, and may run, on the loop
_READ_AHEAD = 64 * 2**20  # bytes of frames queued behind the running one before reading pauses


@dataclass(frozen=True)
class ServerLimits:
    """What one connection may do to the server. (Stored bytes per client: `Node.limits`.)

    `max_message_bytes`: larger messages are refused from their header, before allocation.
    `idle_timeout`: seconds without a frame before a connection is closed (its objects freed).
    `max_connections`: clients served at once. Each has a store and a thread of its own, so a
    peer opening connections without end would exhaust the worker; past this many, the
    handshake is answered 503 and the client told why.
    `max_handshakes`: connections still in their handshake at once (they have shown no token
    yet). Each holds a socket for up to `handshake_timeout`, so a peer opening sockets without
    end would run the worker out of file descriptors; past this many, new ones are closed at
    once.
    """

    max_message_bytes: int = 512 * 2**20
    idle_timeout: float = 3600.0
    handshake_timeout: float = 10.0
    max_connections: int = 64
    max_handshakes: int = 256

    def __post_init__(self) -> None:
        for name in (
            "max_message_bytes",
            "idle_timeout",
            "handshake_timeout",
            "max_connections",
            "max_handshakes",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerLimits.{name} must be positive, got {getattr(self, name)}")


class WorkerServer:
    """Serves `node` on `host:port` (port 0: any free port; see `.port` after `start()`).

    Clients must present `token` (`Authorization: Bearer <token>` or `?token=` in the URL);
    a random one is made when none is given. `ssl_context` turns on TLS (`wss://`).
    """

    def __init__(
        self,
        node: Node,
        *,
        host: str = "127.0.0.1",
        port: int = 8777,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        self._server: asyncio.Server | None = None
        self._trimmer: asyncio.TimerHandle | None = None
        self._connections: set[_ServerConnection] = set()
        self._serial = itertools.count(1)
        self._turned_away_at = -math.inf  # when a full handshake queue was last logged

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self, loop), self.host, self.port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._trim_pool()
        log.info("worker %s listening on %s", self.node.name, self.url)

    def _trim_pool(self) -> None:
        """Give idle receive buffers back to the system from time to time."""
        frames.POOL.trim()
        self._trimmer = asyncio.get_running_loop().call_later(
            frames.POOL.keep_seconds / 2, self._trim_pool
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, tell every client the worker is going away, let running commands
        finish (up to `grace` seconds) and free every client's objects."""
        if self._server is None:
            return
        self._server.close()
        if self._trimmer is not None:
            self._trimmer.cancel()
        for conn in list(self._connections):
            conn.fail(frames.CLOSE_GOING_AWAY, "worker shutting down", warn=False)
        finished = [conn.finished for conn in self._connections]
        if finished:
            _, running = await asyncio.wait(finished, timeout=grace)
            if running:
                log.warning(
                    "worker %s: %d clients' commands still running after %g s",
                    self.node.name,
                    len(running),
                    grace,
                )
        await self._server.wait_closed()
        self._server = None
        log.info("worker %s stopped", self.node.name)

    async def serve_until_signal(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()

    # ---- what connections ask of the server -----------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":  # browsers cannot set headers: ?token=... then
            offered = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        return hmac.compare_digest(offered.strip().encode(), self.token.encode())

    def _clients(self) -> int:
        """Connections past their handshake (those with a store and a thread)."""
        return sum(1 for conn in self._connections if conn.reader is not None)

    def _admits(self, peer: str) -> bool:
        """Whether a new connection may start its handshake (see `ServerLimits.max_handshakes`);
        turning connections away is logged at most once per `handshake_timeout`."""
        waiting = sum(1 for conn in self._connections if not conn.name)
        if waiting < self.limits.max_handshakes:
            return True
        now = time.monotonic()
        if now - self._turned_away_at >= self.limits.handshake_timeout:
            self._turned_away_at = now
            log.warning(
                "worker %s: %d connections are in their handshake; closing new ones "
                "(%s first) until they finish or time out",
                self.node.name,
                waiting,
                peer,
            )
        return False

    def _capacity(self) -> str:
        n = self.limits.max_connections
        return f"{n} connection{'' if n == 1 else 's'}"

    def _client_name(self, peer: str) -> str:
        return f"{peer}#{next(self._serial)}"


class _ServerConnection(asyncio.BufferedProtocol):
    """One client: handshake, then frames in, commands run in order, replies out."""

    def __init__(self, server: WorkerServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.name = ""
        self.reader: Reader | None = None
        self.finished: asyncio.Future[None] = loop.create_future()
        self._request = bytearray()
        self._scratch = memoryview(bytearray(4096))
        self._queue: deque[tuple[int, memoryview | list]] = deque()  # (bytes, frame)
        # One thread per client: its commands run in order, and one client waiting (for an
        # owner's answer, say) never holds up another.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{server.node.name}-client")
        self._queued_bytes = 0
        self._reading_paused = False
        self._task: asyncio.Task | None = None
        self._writable: asyncio.Future[None] | None = None
        self._closed = False
        self.close_reason = ""
        self._last_heard = loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        if not self.server._admits(self.peer):
            self._closed = True
            self.transport.abort()
            return
        self.transport.set_write_buffer_limits(high=4 * _WRITE_CHUNK)
        self.server._connections.add(self)
        self._timer = self.loop.call_later(self.server.limits.handshake_timeout, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.reader is not None:
            return self.reader.buffer()
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._last_heard = self.loop.time()
        if self._closed:
            return
        if self.reader is None:
            self._handshake(bytes(self._scratch[:nbytes]))
            return
        try:
            events = self.reader.advance(nbytes)
        except ProtocolViolation as exc:
            self.fail(exc.code, exc.reason)
            return
        self._on_events(events)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self.close_reason:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed"
        self.resume_writing()
        if self._timer is not None:
            self._timer.cancel()
        self._queue.clear()
        if self._task is None:
            self._finish()

    # ---- handshake ------------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        self._request += data
        end = self._request.find(b"\r\n\r\n")
        if end < 0:
            if len(self._request) > _MAX_REQUEST:
                self._refuse("handshake request too large")
            return
        head, rest = bytes(self._request[: end + 4]), bytes(self._request[end + 4 :])
        protocol = ServerProtocol(max_size=None, logger=_handshake_log)
        protocol.receive_data(head)
        events = protocol.events_received()
        request = events[0] if events and isinstance(events[0], Request) else None
        if request is None:
            self._refuse("not a websocket handshake")
            return
        if not self.server._authorized(request):
            response = protocol.reject(
                HTTPStatus.UNAUTHORIZED,
                "tether: missing or wrong access token; give the token the worker printed at "
                "start: --token on the command line (tether train --token ...), token= in Python "
                "(tether.connect(url, token=...)), or the TETHER_TOKEN environment variable\n",
            )
        elif self.server._clients() >= self.server.limits.max_connections:
            response = protocol.reject(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"tether: worker {self.server.node.name!r} is full: it "
                f"serves at most {self.server._capacity()} at once; "
                "retry when one closes\n",
            )
        else:
            response = protocol.accept(request)
            response.headers[WORKER_HEADER] = self.server.node.name
        protocol.send_response(response)
        self._write_all(protocol.data_to_send())
        if response.status_code != 101:
            reason = {
                401: "wrong or missing access token",
                503: f"already serving {self.server._capacity()}",
            }.get(
                response.status_code,
                f"bad handshake ({response.status_code} {response.reason_phrase})",
            )
            self._refuse(reason)
            return
        self.name = self.server._client_name(self.peer)
        self.reader = Reader(masked=True, max_message=self.server.limits.max_message_bytes)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.server.limits.idle_timeout, self._check_idle)
        log.info("%s: %s connected (client %s)", self.server.node.name, self.peer, self.name)
        if rest:
            target = self.reader.buffer()
            target[: len(rest)] = rest
            self.buffer_updated(len(rest))

    def _write_all(self, chunks: list[bytes]) -> None:
        assert self.transport is not None
        for chunk in chunks:
            if chunk:
                self.transport.write(chunk)

    def _refuse(self, reason: str) -> None:
        log.warning("%s: %s refused: %s", self.server.node.name, self.peer, reason)
        self._closed = True
        assert self.transport is not None
        self.transport.close()

    # ---- frames ---------------------------------------------------------------------------------

    def _on_events(self, events: list[tuple[str, Any]]) -> None:
        for kind, payload in events:
            if kind == "message":
                self._enqueue(payload)
            elif kind == "ping":
                self._send_control(frames.OP_PONG, payload)
            elif kind == "close":
                code, _ = frames.parse_close(payload)
                self.fail(frames.CLOSE_NORMAL, f"client closed the connection ({code})", warn=False)
                return

    def _send_control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(frames.header(opcode, len(payload)) + payload)

    def fail(self, code: int, reason: str, *, warn: bool = True) -> None:
        """Close the connection, with a close frame saying why once the handshake is done."""
        if self._closed:
            return
        if warn:
            log.warning("%s: closing %s: %s", self.server.node.name, self.peer, reason)
        self.close_reason = reason
        if self.name:
            self._send_control(frames.OP_CLOSE, frames.close_payload(code, reason))
        self._closed = True
        self.reader = None
        assert self.transport is not None
        self.transport.close()

    def _enqueue(self, payload: memoryview) -> None:
        """Queue a frame to run after those before it; a small frame of quick commands that
        nothing waits before runs at once, here (see `tether.node.quick`): no thread hand-offs."""
        job: memoryview | list = payload
        if len(payload) <= _INLINE_BYTES:
            with contextlib.suppress(WireError):  # if not, the thread says what is wrong
                job = decode(payload)
            answer = (
                answer_on_loop(self.server.node, job, self.name)
                if isinstance(job, list) and self._task is None and self._writable is None
                else None
            )
            if answer is not None:
                self._send_small(answer.parts())
                return
        self._queue.append((len(payload), job))
        self._queued_bytes += len(payload)
        if self._queued_bytes > _READ_AHEAD and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        if self._task is None:
            self._task = self.loop.create_task(self._process())

    def _maybe_resume_reading(self) -> None:
        if self._reading_paused and self._queued_bytes <= _READ_AHEAD:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    async def _process(self) -> None:
        """Run queued frames one after the other, each reply sent before the next frame runs
        (a reply may hold views of stored tensors that the next frame could change)."""
        try:
            while self._queue and not self._closed:
                size, job = self._queue.popleft()
                self._queued_bytes -= size
                self._maybe_resume_reading()
                parts = await self._answer(job)
                del job
                if not self._closed:
                    await self._send_message(parts)
        finally:
            self._task = None
            if self._closed:
                self._finish()

    async def _answer(self, job: memoryview | list) -> Parts:
        """The reply to one frame (or to its commands, decoded where it arrived), computed on
        the connection's thread, so a long command never stalls other clients or the pings."""
        return await self.loop.run_in_executor(self._executor, self._run, job)

    def _run(self, job: memoryview | list) -> Parts:
        return self.server.node.run(job, self.name).parts()

    def _send_small(self, parts: Parts) -> None:
        assert self.transport is not None
        head = frames.header(frames.OP_BINARY, parts.nbytes)
        self.transport.write(b"".join([head, *parts.pieces()]))

    async def _send_message(self, parts: Parts) -> None:
        assert self.transport is not None
        if parts.nbytes <= _SMALL_WRITE:
            self._send_small(parts)
        else:
            self.transport.write(frames.header(frames.OP_BINARY, parts.nbytes))
            for piece in parts.pieces():
                view = memoryview(piece).cast("B")
                for start in range(0, len(view), _WRITE_CHUNK):
                    self.transport.write(view[start : start + _WRITE_CHUNK])
                    if self._writable is not None:
                        await self._writable
                    if self._closed:
                        return
            # The pieces are views of stored tensors, and uvloop sends what it buffered from
            # where it lies: the next command (which may change them) waits until it is out.
            while self.transport.get_write_buffer_size() and not self._closed:
                await asyncio.sleep(0.001)
        if self._writable is not None:
            await self._writable

    # ---- ending ---------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self._closed:
            return
        if not self.name:
            self._refuse(f"no handshake within {self.server.limits.handshake_timeout:g} s")
            return
        limit = self.server.limits.idle_timeout
        silent = self.loop.time() - self._last_heard
        if silent >= limit and self._task is None:
            self.fail(frames.CLOSE_GOING_AWAY, f"idle for {silent:.0f} s")
            return
        self._timer = self.loop.call_later(max(limit - silent, limit / 10), self._check_idle)

    def _finish(self) -> None:
        """After the last command of this connection ran: free its objects."""
        if self.finished.done():
            return
        self.server._connections.discard(self)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.name:
            store = self.server.node.store(self.name)
            count, nbytes = len(store), store.nbytes
            self.server.node.forget(self.name)
            log.info(
                "%s: %s disconnected (%s); freed %d objects, %d bytes",
                self.server.node.name,
                self.peer,
                self.close_reason,
                count,
                nbytes,
            )
        self.finished.set_result(None)


def server_ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A TLS context for `wss://` from a certificate chain and its key (PEM files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def serve(server: WorkerServer, on_ready: Callable[[WorkerServer], None] | None = None) -> None:
    """Run `server` in this thread until SIGINT/SIGTERM (what `tether worker` does)."""

    async def main() -> None:
        await server.start()
        if on_ready is not None:
            on_ready(server)
        await server.serve_until_signal()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:  # measured here: pipelined ops ~2x faster, a blocking round trip ~25% quicker
        uvloop.run(main())
