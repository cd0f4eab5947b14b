"""RFC 6455 framing for tether frames, written for bulk speed.

The `websockets` library does the HTTP handshake (see server.py and client.py); the message
framing is here because that library copies each large message four or five times (stream
buffer, slice, unmask, assembly), which on this class of machine costs more than the network.
Here a large payload is received straight into its final buffer (`recv_into`, into recycled
memory: see BufferPool), unmasked in place as it arrives, and decoded without a copy; sending
writes the codec's parts without joining them.
"""

from __future__ import annotations

import mmap
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from tether.wire.codec import aligned_bytes

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = {OP_CONTINUATION, OP_TEXT, OP_BINARY}
_CONTROL_OPS = {OP_CLOSE, OP_PING, OP_PONG}

# The handshake response header that names the worker a client reached.
WORKER_HEADER = "X-Tether-Worker"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009

# A message may come in at most this many frames, each charged this many bytes more than its
# payload against the message limit: 2 million empty continuation frames would otherwise hold
# hundreds of MB of bookkeeping for a message of no bytes at all.
MAX_FRAGMENTS = 1024
FRAGMENT_BYTES = 64

# Frames that fit in the reader's staging buffer are copied out of it; larger payloads are
# received straight into their own buffer.
STAGING_BYTES = 256 * 1024
_SMALL_XOR = 1024


class ProtocolViolation(Exception):
    """The peer broke the websocket protocol or a limit; close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def header(opcode: int, length: int, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """The frame header for a payload of `length` bytes (with the masking key, if any)."""
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, masked | length)
    elif length < 2**16:
        head = struct.pack("!BBH", first, masked | 126, length)
    else:
        head = struct.pack("!BBQ", first, masked | 127, length)
    return head + mask if mask is not None else head


def close_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode()[:120]


def parse_close(payload: bytes | bytearray) -> tuple[int, str]:
    """(code, reason) of a close frame; 1005 when it carries no code."""
    if len(payload) < 2:
        return 1005, ""
    return struct.unpack_from("!H", payload)[0], bytes(payload[2:]).decode(errors="replace")


def xor_mask(data: memoryview, key: bytes, phase: int = 0, out: memoryview | None = None) -> None:
    """XOR `data` with the repeating 4-byte `key`, starting `phase` bytes into the key;
    in place, or into `out` (same length)."""
    n = len(data)
    if n == 0:
        return
    k = key[phase % 4 :] + key[: phase % 4]
    target = data if out is None else out
    if n <= _SMALL_XOR:
        repeated = (k * (n // 4 + 1))[:n]
        value = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
        target[:] = value.to_bytes(n, "little")
        return
    src = np.frombuffer(data, np.uint8)
    dst = np.frombuffer(target, np.uint8)
    whole = n - n % 8
    np.bitwise_xor(
        src[:whole].view(np.uint64),
        np.frombuffer(k * 2, np.uint64)[0],
        out=dst[:whole].view(np.uint64),
    )
    if whole < n:
        np.bitwise_xor(src[whole:], np.frombuffer(k * 2, np.uint8)[: n - whole], out=dst[whole:])


class BufferPool:
    """Memory for large incoming messages, taken back when the tensors decoded from it die and
    handed out again. Fresh memory costs a page fault per page on first touch (on a VM, often
    more than moving the bytes does); a worker that receives a model every round, or a client
    that fetches one, gets memory that is already mapped. Blocks are page-aligned (so decoded
    tensors use them in place); idle ones are released after `keep_seconds`, or when more than
    `max_idle_bytes` wait."""

    def __init__(self, max_idle_bytes: int = 2**30, keep_seconds: float = 30.0) -> None:
        self.max_idle_bytes = max_idle_bytes
        self.keep_seconds = keep_seconds
        self._idle: list[tuple[float, mmap.mmap]] = []
        self._lock = threading.Lock()

    @property
    def idle_bytes(self) -> int:
        return sum(len(block) for _, block in self._idle)

    def take(self, n: int) -> memoryview:
        """A writable buffer of `n` bytes (contents undefined)."""
        self.trim()
        with self._lock:
            fits = [(len(b), i) for i, (_, b) in enumerate(self._idle) if n <= len(b) <= 2 * n]
            block = self._idle.pop(min(fits)[1])[1] if fits else None
        if block is None:
            block = mmap.mmap(-1, max(n, 1))
            if hasattr(mmap, "MADV_HUGEPAGE"):
                block.madvise(mmap.MADV_HUGEPAGE)
        array = np.frombuffer(block, np.uint8)
        weakref.finalize(array, self._give_back, block).atexit = False
        return memoryview(array[:n]).cast("B")  # type: ignore[arg-type]  # numpy's stubs give ndarray __buffer__ on Python >= 3.12 only

    def trim(self) -> None:
        """Release blocks idle for longer than `keep_seconds`."""
        self._release(lambda since, now: now - since > self.keep_seconds)

    def _give_back(self, block: mmap.mmap) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), block))
        self._release(lambda since, now: False)

    def _release(self, expired: Callable[[float, float], bool]) -> None:
        now = time.monotonic()
        with self._lock:
            kept, total = [], 0
            for since, block in sorted(self._idle, key=lambda item: -item[0]):  # newest first
                if expired(since, now) or total + len(block) > self.max_idle_bytes:
                    block.close()  # nothing refers to it: its array died
                else:
                    kept.append((since, block))
                    total += len(block)
            self._idle = kept


# Messages at least this large are received into pooled memory.
POOLED_BYTES = 16 * 2**20
# Smaller data messages than this are copied out of the staging buffer as a bytearray (the
# cheapest copy); larger ones into aligned memory, as large ones are received.
_ALIGNED_FROM = 1024
POOL = BufferPool()


def receive_buffer(n: int) -> memoryview:
    """Where a message of `n` bytes is received: aligned as the codec aligns tensors in a frame
    (so tensors decoded from it use it in place), and pooled when large."""
    if n >= POOLED_BYTES:
        return POOL.take(n)
    return memoryview(aligned_bytes(n)).cast("B")  # type: ignore[arg-type]  # numpy's stubs give ndarray __buffer__ on Python >= 3.12 only


class Reader:
    """Parses the frames a peer sends, incrementally: read into `buffer()`, then report the
    byte count to `advance()`, which returns the complete events:
    ("message", writable buffer) | ("ping", bytes) | ("pong", bytes) | ("close", bytes).

    `masked`: whether the peer must mask (it must when it is a client). `max_message`: a
    message that would grow past it is refused as soon as a frame header announces it, before
    anything is allocated; each frame of a fragmented message counts FRAGMENT_BYTES more, and
    one of more than MAX_FRAGMENTS frames is refused. Raises ProtocolViolation.
    """

    def __init__(self, *, masked: bool, max_message: int) -> None:
        self.masked = masked
        self.max_message = max_message
        self._staging = bytearray(STAGING_BYTES)
        self._view = memoryview(self._staging)
        self._start = 0
        self._end = 0
        self._bulk: memoryview | None = None  # payload being received in place
        self._bulk_pos = 0
        self._bulk_key = b""
        self._bulk_fin = False
        self._fragments: list[memoryview | bytearray] = []
        self._message_size = 0
        self._charged = 0  # _message_size, plus FRAGMENT_BYTES per frame of a fragmented one
        self._in_message = False  # between the first and the last frame of a fragmented one

    def buffer(self) -> memoryview:
        """Where the next bytes from the peer go."""
        if self._bulk is not None:
            return self._bulk[self._bulk_pos :]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._staging) or self._start > len(self._staging) // 2:
            pending = self._end - self._start
            self._staging[:pending] = bytes(self._view[self._start : self._end])  # may overlap
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def advance(self, n: int) -> list[tuple[str, object]]:
        """`n` bytes were written into the last `buffer()`; the events now complete."""
        events: list[tuple[str, object]] = []
        if self._bulk is not None:
            chunk = self._bulk[self._bulk_pos : self._bulk_pos + n]
            if self.masked:
                xor_mask(chunk, self._bulk_key, self._bulk_pos)
            self._bulk_pos += n
            if self._bulk_pos == len(self._bulk):
                payload, self._bulk = self._bulk, None
                self._data(payload, self._bulk_fin, events)
            return events
        self._end += n
        while self._parse_one(events):
            pass
        return events

    def _parse_one(self, events: list) -> bool:
        view, start = self._view, self._start
        available = self._end - start
        if available < 2:
            return False
        first, second = view[start], view[start + 1]
        fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
        if first & 0x70:
            raise ProtocolViolation(
                CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)"
            )
        if bool(second & 0x80) != self.masked:
            raise ProtocolViolation(
                CLOSE_PROTOCOL_ERROR, "client frames must be masked and server frames must not be"
            )
        size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if self.masked else 0)
        if available < size:
            return False
        if length == 126:
            length = struct.unpack_from("!H", view, start + 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", view, start + 2)[0]
        self._check(opcode, fin, length)
        key = bytes(view[start + size - 4 : start + size]) if self.masked else b""
        body = start + size
        if opcode in _CONTROL_OPS or size + length <= len(self._staging):
            if available < size + length:
                return False
            payload: bytearray | memoryview
            if opcode in _CONTROL_OPS or length < _ALIGNED_FROM:
                payload = bytearray(view[body : body + length])
            else:  # aligned, so the tensors decoded from it need no copy of their own
                payload = receive_buffer(length)
                payload[:] = view[body : body + length]
            if self.masked:
                xor_mask(memoryview(payload), key)
            self._start = body + length
            if opcode in _CONTROL_OPS:
                events.append((_CONTROL_NAMES[opcode], bytes(payload)))
            else:
                self._data(memoryview(payload), fin, events)
            return True
        # A large payload: give it its own buffer (untouched until bytes arrive) and receive
        # the rest straight into it.
        try:
            target = receive_buffer(length)
        except MemoryError:
            raise ProtocolViolation(
                CLOSE_TOO_BIG, f"no memory for a {length:,}-byte message"
            ) from None
        have = available - size
        target[:have] = view[body : self._end]
        if self.masked:
            xor_mask(target[:have], key)
        self._start = self._end = 0
        self._bulk, self._bulk_pos, self._bulk_key, self._bulk_fin = target, have, key, fin
        return False

    def _check(self, opcode: int, fin: bool, length: int) -> None:
        if opcode in _CONTROL_OPS:
            if not fin or length > 125:
                raise ProtocolViolation(
                    CLOSE_PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes"
                )
            return
        if opcode not in _DATA_OPS:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if (opcode == OP_CONTINUATION) != self._in_message:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation frame out of place")
        if opcode == OP_TEXT:
            raise ProtocolViolation(CLOSE_UNSUPPORTED, "tether speaks binary messages only")
        if len(self._fragments) >= MAX_FRAGMENTS:
            raise ProtocolViolation(
                CLOSE_TOO_BIG, f"a message in more than {MAX_FRAGMENTS:,} frames"
            )
        if self._charged + self._charge(length, fin) > self.max_message:
            frames = len(self._fragments) + 1
            counted = (
                f" in {frames} frames (each counted as {FRAGMENT_BYTES} bytes more)"
                if self._in_message or not fin
                else ""
            )
            raise ProtocolViolation(
                CLOSE_TOO_BIG,
                f"a message of {self._message_size + length:,} bytes{counted}"
                f" exceeds this side's limit of {self.max_message:,}",
            )

    def _charge(self, length: int, fin: bool) -> int:
        """What a data frame of `length` bytes counts against the message limit."""
        return length + (FRAGMENT_BYTES if self._in_message or not fin else 0)

    def _data(self, payload: memoryview, fin: bool, events: list) -> None:
        self._charged += self._charge(len(payload), fin)
        self._message_size += len(payload)
        if not fin:
            self._in_message = True
            self._fragments.append(payload)
            return
        if self._fragments:
            self._fragments.append(payload)
            payload = receive_buffer(self._message_size)
            pos = 0
            for piece in self._fragments:
                payload[pos : pos + len(piece)] = piece
                pos += len(piece)
            self._fragments = []
        self._message_size = self._charged = 0
        self._in_message = False
        events.append(("message", payload))


_CONTROL_NAMES = {OP_CLOSE: "close", OP_PING: "ping", OP_PONG: "pong"}


def masked_chunks(
    pieces: list[bytes | memoryview], key: bytes, scratch: bytearray
) -> Iterator[memoryview]:
    """The pieces of a payload XORed with `key`, through the reusable `scratch` buffer: each
    yielded view is valid until the next one is asked for."""
    out = memoryview(scratch)
    filled = 0
    phase = 0
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while view:
            n = min(len(view), len(out) - filled)
            xor_mask(view[:n], key, phase, out[filled : filled + n])
            filled += n
            phase = (phase + n) % 4
            view = view[n:]
            if filled == len(out):
                yield out
                filled = 0
    if filled:
        yield out[:filled]
