"""The scientist's end of a network worker: `WebsocketClientWorker` and `connect()`.

The transport works in the caller's thread on a non-blocking socket: `exchange()` writes the
frame at once and returns; the replies are read when they are waited for (and, while a large
frame is being written, as they arrive, so neither side can block the other). Nothing else runs
in the background, so a blocking round trip costs one write and one read. A worker that stays
silent is pinged; one that answers nothing for `timeout` seconds, or whose connection breaks,
gives `ConnectionLostError` instead of a hang, and the next use connects again.

Long because it is one end of the protocol, whole: handshake, framing, pipelining, pings and
reconnection; the other end is `server.py`, the frames both speak are in `frames.py`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import ssl
import threading
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.http11 import Response
from websockets.uri import parse_uri

from tether.errors import ConnectionLostError, TetherError, WireError
from tether.remote.client import Client, Replies
from tether.remote.worker import Worker
from tether.transports.websocket import frames
from tether.transports.websocket.frames import WORKER_HEADER, ProtocolViolation, Reader
from tether.wire import Parts, decode, encode_parts

DEFAULT_TIMEOUT = 60.0
_SMALL_FRAME = 64 * 1024
_SCRATCH = 1 << 20
_MAX_RESPONSE = 64 * 1024
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class AccessDeniedError(TetherError):
    """The worker refused the connection: a missing or wrong access token."""


class WebsocketTransport:
    """Carries a Client's frames to a worker at `url` (`ws://` or `wss://`).

    `token`: the worker's access token (default: the TETHER_TOKEN environment variable).
    `timeout`: seconds of silence from the worker (which answers pings even while it computes)
    before the connection counts as lost. Connects at once, so a bad address or token fails here.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        max_message_bytes: int = 2**34,
    ) -> None:
        try:
            self._uri = parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(
                f"{url!r} is not a worker address: use ws://HOST:PORT or wss://HOST:PORT"
            ) from exc
        self.url = url
        self.token = token if token is not None else os.environ.get("TETHER_TOKEN", "")
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._ssl = (
            ssl_context
            if ssl_context is not None
            else (ssl.create_default_context() if self._uri.secure else None)
        )
        self._lock = threading.Lock()
        self.closed = False
        self._connection: _ClientConnection = self._open()
        self.worker_id: str = self._connection.worker_id

    def exchange(self, commands: list, adopted: frozenset[int] = frozenset()) -> Replies:
        """Send the commands now; the returned function waits for their replies (which arrive
        in memory of their own: `adopted` changes nothing here)."""
        with self._lock:
            if self.closed:
                raise ConnectionLostError(f"worker {self.worker_id!r} is gone (it was closed)")
            connection = self._connection
            if connection.error is not None and (
                connection.reported or connection.outstanding == 0
            ):
                try:
                    connection = self._connection = self._open()
                except ConnectionLostError as exc:
                    return _raising(exc)
            seq = connection.send(encode_parts(commands))
        return functools.partial(self._wait, connection, seq)

    def close(self) -> None:
        """Say goodbye; the worker frees everything this client stored. Further use raises."""
        with self._lock:
            self.closed = True
            self._connection.close()

    def _wait(self, connection: _ClientConnection, seq: int) -> list:
        with self._lock:
            return connection.wait(seq)

    def _open(self) -> _ClientConnection:
        return _ClientConnection.open(
            self.url, self._uri, self.token, self.timeout, self._ssl, self.max_message_bytes
        )


def _control_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    masked = bytearray(payload)
    frames.xor_mask(memoryview(masked), key)
    return frames.header(opcode, len(payload), mask=key) + masked


def _raising(exc: Exception) -> Replies:
    def wait() -> list:
        raise exc

    return wait


class _ClientConnection:
    """One websocket connection: frames out in order, replies in order."""

    def __init__(
        self, sock: socket.socket, url: str, worker_id: str, timeout: float, max_message_bytes: int
    ) -> None:
        self.sock = sock
        self.url = url
        self.worker_id = worker_id
        self.timeout = timeout
        self.reader = Reader(masked=False, max_message=max_message_bytes)
        self.sent = 0
        self.received = 0
        self.replies: dict[int, list | TetherError] = {}
        self.error: ConnectionLostError | None = None
        self.reported = False
        self._scratch: bytearray | None = None
        self._last_heard = self._last_ping = time.monotonic()

    @property
    def outstanding(self) -> int:
        return self.sent - self.received

    @classmethod
    def open(
        cls,
        url: str,
        uri: Any,
        token: str,
        timeout: float,
        context: ssl.SSLContext | None,
        max_message_bytes: int,
    ) -> _ClientConnection:
        try:
            sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        except OSError as exc:
            raise ConnectionLostError(f"cannot reach a worker at {url}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=uri.host)
            worker_id, early = _handshake(sock, url, uri, token)
        except OSError as exc:  # TLS refused, mostly: name the address and the reason
            sock.close()
            raise ConnectionLostError(f"cannot connect to the worker at {url}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        connection = cls(sock, url, worker_id, timeout, max_message_bytes)
        if early:
            connection.reader.buffer()[: len(early)] = early
            connection._on_events(connection.reader.advance(len(early)))
        return connection

    # ---- out ----------------------------------------------------------------------------------

    def send(self, parts: Parts) -> int:
        """Write one frame (unless the connection is already lost); its sequence number."""
        seq = self.sent
        self.sent += 1
        if self.error is None:
            try:
                self._write_message(parts)
            except OSError as exc:
                self._lose(f"sending failed: {exc}")
        return seq

    def _write_message(self, parts: Parts) -> None:
        pieces = parts.pieces()
        key = os.urandom(4)
        head = frames.header(frames.OP_BINARY, parts.nbytes, mask=key)
        if parts.nbytes <= _SMALL_FRAME:
            payload = bytearray(b"".join(pieces))
            frames.xor_mask(memoryview(payload), key)
            self._send_all(head + payload)
            return
        self._send_all(head)
        if self._scratch is None:
            self._scratch = bytearray(_SCRATCH)
        for chunk in frames.masked_chunks(pieces, key, self._scratch):
            self._send_all(chunk)
            if self.error is not None:
                return

    def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view and self.error is None:
            with contextlib.suppress(*_WOULD_BLOCK):
                view = view[self.sock.send(view) :]
            if not view:
                return
            readable, writable = self._poll(self.timeout, write=True)
            if readable:  # take replies in while writing, so the worker never blocks on us
                self._read(block=False)
            elif not writable:
                self._lose(f"the worker accepted no data for {self.timeout:g} s")

    def _poll(self, timeout: float, write: bool = False) -> tuple[bool, bool]:
        """Wait until the socket is readable (or writable, if asked); (readable, writable)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | (select.POLLOUT if write else 0))
        flags = sum(flag for _, flag in poller.poll(timeout * 1000))
        return bool(flags & ~select.POLLOUT), bool(flags & select.POLLOUT)

    def close(self) -> None:
        if self.error is None:
            with contextlib.suppress(OSError):  # if it cannot go, closing the socket says it
                self.sock.send(
                    _control_frame(frames.OP_CLOSE, frames.close_payload(frames.CLOSE_NORMAL, ""))
                )
            self.error = ConnectionLostError(f"the connection to {self.url} was closed")
        self.reported = True
        self.sock.close()

    # ---- in -----------------------------------------------------------------------------------

    def wait(self, seq: int) -> list:
        """The replies to frame `seq`, reading until they are here."""
        while seq not in self.replies:
            if self.error is not None:
                self.reported = True
                raise self.error
            self._read(block=True)
        found = self.replies.pop(seq)
        if isinstance(found, TetherError):
            raise found
        return found

    def _read(self, block: bool) -> None:
        """Read what has arrived; with `block`, wait for something (pinging a silent worker,
        and giving up after `timeout` seconds without a byte from it)."""
        while self.error is None:
            try:
                n = self.sock.recv_into(self.reader.buffer())
            except _WOULD_BLOCK:
                n = -1
            except OSError as exc:
                self._lose(f"receiving failed: {exc}")
                return
            if n == 0:
                self._lose("the worker closed the connection")
                return
            if n > 0:
                self._last_heard = time.monotonic()
                try:
                    self._on_events(self.reader.advance(n))
                except ProtocolViolation as exc:
                    self._lose(f"the worker broke the protocol: {exc.reason}")
                return
            if not block:
                return
            self._await_readable()

    def _await_readable(self) -> None:
        now = time.monotonic()
        if now - self._last_heard >= self.timeout:
            self._lose(f"the worker sent nothing for {self.timeout:g} s")
            return
        ping_every = self.timeout / 3
        if now - max(self._last_heard, self._last_ping) >= ping_every:
            self._last_ping = now
            self._send_control(frames.OP_PING, b"")
            if self.error is not None:
                return
        wake = min(
            max(self._last_heard, self._last_ping) + ping_every, self._last_heard + self.timeout
        )
        self._poll(max(wake - now, 0.001))

    def _on_events(self, events: list[tuple[str, Any]]) -> None:
        for kind, payload in events:
            if kind == "message":
                try:
                    self.replies[self.received] = decode(payload)
                except WireError as exc:
                    self.replies[self.received] = exc
                self.received += 1
            elif kind == "ping":
                self._send_control(frames.OP_PONG, payload)
            elif kind == "close":
                code, reason = frames.parse_close(payload)
                self._lose(
                    f"the worker closed the connection ({code}{': ' + reason if reason else ''})"
                )
                return

    def _send_control(self, opcode: int, payload: bytes) -> None:
        try:
            self._send_all(_control_frame(opcode, payload))
        except OSError as exc:
            self._lose(f"sending failed: {exc}")

    def _lose(self, why: str) -> None:
        if self.error is None:
            self.error = ConnectionLostError(
                f"lost the connection to worker {self.worker_id!r} at {self.url}: {why}"
            )
            self.sock.close()


def _handshake(sock: socket.socket, url: str, uri: Any, token: str) -> tuple[str, bytes]:
    """The websocket opening handshake (checked by the `websockets` library's protocol object).
    Returns the worker's id and any bytes that came after the handshake."""
    protocol = ClientProtocol(uri, max_size=None)
    request = protocol.connect()
    if token:
        request.headers["Authorization"] = f"Bearer {token}"
    protocol.send_request(request)
    try:
        for data in protocol.data_to_send():
            sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received and len(received) < _MAX_RESPONSE:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        end = received.find(b"\r\n\r\n") + 4
        accepted = received.startswith(b"HTTP/1.1 101 ") and end > 3
        while not accepted and chunk and len(received) < _MAX_RESPONSE:  # the refusal's body
            chunk = sock.recv(4096)
            received += chunk
    except OSError as exc:
        raise ConnectionLostError(f"handshake with {url} failed: {exc}") from None
    protocol.receive_data(received[:end] if accepted else received)
    events = protocol.events_received()
    if not events and not accepted:
        protocol.receive_eof()
        events = protocol.events_received()
    reply = events[0] if events and isinstance(events[0], Response) else None
    if reply is not None and reply.status_code == 401:
        raise AccessDeniedError(
            f"the worker at {url} refused the access token "
            f"({'wrong token' if token else 'none given'}); pass "
            "token=... or set TETHER_TOKEN to the token the worker printed"
        )
    if reply is not None and reply.status_code == 503:
        why = reply.body.decode(errors="replace").strip() if reply.body else "it is busy"
        raise ConnectionLostError(
            f"the worker at {url} refused the connection: {why.removeprefix('tether: ')}"
        )
    if reply is None or protocol.handshake_exc is not None:
        detail = protocol.handshake_exc or "no valid HTTP response"
        raise ConnectionLostError(f"handshake with {url} failed: {detail}")
    return reply.headers.get(WORKER_HEADER, f"{uri.host}:{uri.port}"), received[end:]


class WebsocketClientWorker(Worker):
    """A worker on another machine (or process), reached over a websocket:
    `WebsocketClientWorker(hook, host="localhost", port=8777, id="alice", token=...)` (the hook
    is accepted, and not needed, as in the PySyft tutorials; `url=` replaces host and port).

    Pointers, models and optimizers work against it as against a VirtualWorker. Objects sent
    over one connection live until it closes; after a lost connection the next use reconnects
    (as a new client: pointers made before point at nothing); after `close()`, use raises.
    """

    def __init__(
        self,
        hook: Any = None,
        host: str = "localhost",
        port: int = 8777,
        secure: bool = False,
        id: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        url: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.url = url or f"{'wss' if secure else 'ws'}://{host}:{port}"
        self.transport = WebsocketTransport(
            self.url, token, timeout=timeout, ssl_context=ssl_context
        )
        self.id = id or self.transport.worker_id
        if verbose:
            print(f"connected to worker {self.transport.worker_id!r} at {self.url}")
        self.client = Client(self, self.transport)

    def __repr__(self) -> str:
        return f"<WebsocketClientWorker {self.id!r} at {self.url}>"


def connect(
    url: str,
    token: str | None = None,
    *,
    id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> WebsocketClientWorker:
    """Connect to the worker at `url` (`ws://host:port` or `wss://host:port`)."""
    return WebsocketClientWorker(
        url=url, id=id, token=token, timeout=timeout, ssl_context=ssl_context
    )
