"""A hostile client against a real `tether worker` process, spending the worker's resources
(issue 22, class 7): Python ints grown without bound, objects stored without end, frames that
hold the event loop, messages in millions of fragments.

Each attack must fail (a LimitError, or the connection closed early), hold the worker's memory
and time to a bound, and leave the worker serving other clients.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from conftest import WorkerProcess, join, raw_socket

import tether as sy
from tether.node import Limits, Node
from tether.node.quick import QUICK_COMMANDS, runs_on_loop
from tether.node.store import OBJECT_BYTES
from tether.ops.guards import MAX_INT_BITS
from tether.transports.websocket.frames import (
    CLOSE_TOO_BIG,
    MAX_FRAGMENTS,
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    Reader,
    header,
    xor_mask,
)
from tether.wire import Call, Delete, Done, Failure, Get, Put, Ref

OUT = 1000
FAST = 0.05  # seconds: a bystander's round trip while an attack runs


@pytest.fixture(scope="module")
def worker_process() -> Iterator[WorkerProcess]:
    """A default worker (training policy), whose torch computes on one thread: the machine's
    other core is left to the event loop, so what stalls a bystander is the loop itself."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        process = WorkerProcess("--id", "victim", "--max-objects", "1000")
    finally:
        del os.environ["OMP_NUM_THREADS"]
    yield process
    process.stop()


@pytest.fixture
def mallory(worker_process: WorkerProcess) -> Iterator[sy.WebsocketClientWorker]:
    with worker_process.connect(timeout=60) as worker:
        yield worker


@pytest.fixture
def bystander(worker_process: WorkerProcess) -> Iterator[sy.WebsocketClientWorker]:
    with worker_process.connect(timeout=60) as worker:
        yield worker


def exchange(worker: sy.WebsocketClientWorker, *commands: object) -> list:
    """Send hand-built commands on the worker's connection; its replies, one per command."""
    return worker.client.transport.exchange(list(commands))()


def assert_serves(worker: sy.WebsocketClientWorker) -> None:
    """The worker still answers a normal command of this client."""
    assert torch.equal((torch.ones(2).send(worker) + 1).get(), torch.full((2,), 2.0))


def assert_limit(reply: object, says: str) -> None:
    assert isinstance(reply, Failure) and reply.kind == "LimitError", reply
    assert says in reply.message, reply.message


def round_trips_while(worker: sy.WebsocketClientWorker, attack: Callable[[], None]) -> list[float]:
    """Run `attack` in a thread; the seconds of each of this client's round trips meanwhile."""
    x = torch.arange(4.0).send(worker)
    assert torch.equal((x + 1).get(), torch.arange(4.0) + 1)  # warm
    failed: list[BaseException] = []

    def run() -> None:
        try:
            attack()
        except BaseException as exc:  # reported in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    times = []
    while thread.is_alive() or not times:
        start = time.perf_counter()
        assert torch.equal((x + 1).get(), torch.arange(4.0) + 1)
        times.append(time.perf_counter() - start)
    join(thread, 120)
    assert not failed, failed
    return times


# ---- Python ints -------------------------------------------------------------------------------


def test_shifted_ints_are_refused_before_they_are_made(worker_process, mallory, bystander):
    """The issue's 4 x `1 << 2**29` held 273 MB against a 16 MB limit."""
    before = worker_process.rss_kb()
    replies = exchange(
        mallory, *[Call("operator.lshift", [1, 2**29], {}, OUT + i) for i in range(4)]
    )
    for reply in replies:
        assert_limit(reply, f"this node allows {MAX_INT_BITS:,}")
    missing = exchange(mallory, Get([OUT]))[0]
    assert isinstance(missing, Failure) and missing.kind == "ObjectNotFoundError", missing
    assert worker_process.rss_kb() - before < 10_000
    assert_serves(mallory)
    assert_serves(bystander)


def test_a_huge_power_is_refused_at_once_and_other_clients_never_wait(mallory, bystander):
    """`3 ** (2 * 10**7)` held the GIL for seconds: other clients' round trips 2 ms -> 11 s."""
    answered: list[float] = []

    def attack() -> None:
        for _ in range(20):
            start = time.perf_counter()
            (reply,) = exchange(mallory, Call("operator.pow", [3, 2 * 10**7], {}, OUT))
            answered.append(time.perf_counter() - start)
            assert_limit(reply, "3 ** 20000000 would be a Python int of about 31,699,251 bits")

    times = round_trips_while(bystander, attack)
    assert len(answered) == 20 and max(answered) < 1.0, answered
    assert statistics.median(times) < FAST, times
    assert_serves(mallory)


@pytest.mark.parametrize(
    ("op", "args", "says"),
    [
        ("builtins.int", ["7" * 100_000], "int() of 100,000 characters"),
        ("builtins.int", ["f" * 10_000, 16], "int() of 10,000 characters"),
        ("builtins.round", [1, -(10**6)], "rounding to -1000000 digits"),
        ("operator.mul", [2**63, 2**63], None),  # 127 bits: made
        ("operator.pow", [2, MAX_INT_BITS - 1], None),  # 4096 bits: the largest made
        ("operator.pow", [2, MAX_INT_BITS], "this node allows"),
        ("operator.pow", [-1, 10**18], None),  # -1, 0 and 1 stay small
        ("operator.lshift", [0, 10**18], None),
    ],
    ids=[
        "int(100k digits)",
        "int(hex)",
        "round(1, -10**6)",
        "mul",
        "2**4095",
        "2**4096",
        "-1**n",
        "0<<n",
    ],
)
def test_every_op_that_makes_an_int_bounds_its_bits_first(mallory, op, args, says):
    (reply,) = exchange(mallory, Call(op, args, {}, OUT))
    if says is None:
        assert isinstance(reply, Done), reply
    else:
        assert_limit(reply, says)
    assert_serves(mallory)


def test_an_int_over_the_bound_made_by_any_path_is_not_kept(mallory):
    """`int()` of 4,000 decimal digits parses (Python allows 4,300) into 13,000 bits: the
    store refuses it, as it would any int a guard missed."""
    replies = exchange(
        mallory,
        Call("builtins.int", ["9" * 4000], {}, OUT),
        Call("builtins.str", [Ref(OUT)], {}, OUT + 1),
    )
    assert_limit(replies[0], f"a Python int of more than {MAX_INT_BITS:,} bits")
    assert isinstance(replies[1], Failure) and replies[1].kind == "ObjectNotFoundError"
    assert_serves(mallory)


def test_summing_lists_in_quadratic_time_is_refused(mallory):
    replies = exchange(
        mallory,
        Call("operator.mul", [[[0] * 100], 10_000], {}, OUT),
        Call("builtins.sum", [Ref(OUT), []], {}, OUT + 1),
    )
    assert isinstance(replies[0], Done), replies[0]
    assert isinstance(replies[1], Failure) and "starts from a number" in replies[1].message
    assert_serves(mallory)


# ---- stored objects ----------------------------------------------------------------------------


def test_tiny_puts_stop_at_the_object_limit_and_the_worker_serves_on(mallory, bystander):
    """The worker was started with `--max-objects 1000`: 1,500 Puts of one int each."""
    replies = exchange(mallory, *[Put(OUT + i, i) for i in range(1500)])
    assert all(isinstance(r, Done) for r in replies[:1000]), replies[:1000]
    for reply in replies[1000:]:
        assert_limit(reply, "this client holds 1,000 objects, the most this node keeps for one")
    assert isinstance(exchange(mallory, Delete([OUT + i for i in range(10)]))[0], Done)
    assert_serves(mallory)
    assert_serves(bystander)  # the limit is per client


def test_the_default_object_limit_stops_a_flood_of_puts():
    node = Node("owner")
    replies = node.run([Put(i, 0) for i in range(100_001)]).replies
    assert isinstance(replies[-2], Done)
    assert_limit(replies[-1], "holds 100,000 objects")
    assert isinstance(node.run([Delete([0]), Put(0, torch.ones(2))]).replies[1], Done)


def test_python_objects_count_against_the_stored_bytes():
    """Ints, text and containers cost their size, every object at least OBJECT_BYTES."""
    node = Node("owner", limits=Limits(max_stored_bytes=100_000))
    replies = node.run(
        [
            Put(1, "x"),
            Call("operator.mul", ["x", 200_000], {}, 2),  # 200 kB of text
            Call("operator.mul", [[0], 20_000], {}, 3),  # 160 kB of list slots
        ]
    ).replies
    assert isinstance(replies[0], Done)
    assert node.store().nbytes == OBJECT_BYTES
    for reply in replies[1:]:
        assert_limit(reply, "limit of 100000 bytes")
    assert isinstance(node.run([Put(4, torch.ones(10))]).replies[0], Done)
    assert node.store().nbytes == 2 * OBJECT_BYTES


# ---- the event loop ----------------------------------------------------------------------------


def test_an_expensive_small_frame_never_stalls_the_loop(mallory, bystander):
    """A frame of 20 broadcasting adds of a (4096, 1) and a (1, 4096) tensor, 0.5 kB of
    elementwise operators: on the event loop (the quick path) it stalled everyone for seconds."""
    puts = [Put(OUT, torch.ones(4096, 1)), Put(OUT + 1, torch.ones(1, 4096))]
    frame = [Call("operator.add", [OUT, OUT + 1], {}, None, refs=3)] * 20
    node = Node("n")
    node.run(puts)
    assert not runs_on_loop(node, frame)
    exchange(mallory, *puts)
    took: list[float] = []

    def attack() -> None:
        start = time.perf_counter()
        replies = exchange(mallory, *frame)
        took.append(time.perf_counter() - start)
        assert all(isinstance(r, Done) for r in replies), replies[:3]

    times = round_trips_while(bystander, attack)
    assert took[0] > 5 * FAST, took  # long enough that a stalled loop would show
    assert statistics.median(times) < FAST and len(times) > 5, times
    assert_serves(mallory)


def test_quick_frames_are_bounded_by_what_they_touch_not_by_their_bytes():
    node = Node("n", release="open")
    node.run([Put(1, torch.ones(64)), Put(2, torch.ones(64, 1)), Put(3, [0] * 10), Put(4, "text")])
    small = Call("operator.add", [1, 1], {}, None, refs=1)
    assert runs_on_loop(node, [small] * QUICK_COMMANDS)
    assert not runs_on_loop(node, [small] * (QUICK_COMMANDS + 1))
    assert not runs_on_loop(node, [Call("operator.add", [1, 2], {}, None, refs=3)] * 13)  # 53k
    assert not runs_on_loop(node, [Delete([3])])  # freeing a list may take long
    assert not runs_on_loop(node, [Call("operator.add", [1, 1], {}, 3, refs=1)])  # replaces it
    assert runs_on_loop(node, [Delete([1, 99])])
    assert not runs_on_loop(node, [Call("operator.mul", ["a", 2**28], {}, 5)])  # not a number
    assert not runs_on_loop(node, [Call("operator.mul", [4, 5], {}, 5, refs=1)])  # text


# ---- fragments ---------------------------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    key = os.urandom(4)
    body = bytearray(payload)
    xor_mask(memoryview(body), key)
    return header(opcode, len(payload), fin=fin, mask=key) + body


def next_event(sock: socket.socket, reader: Reader) -> tuple[str, bytes]:
    while True:
        n = sock.recv_into(reader.buffer())
        assert n, "connection ended without a frame"
        events = reader.advance(n)
        if events:
            return events[0]  # type: ignore[return-value]


def test_a_message_in_more_than_1024_frames_closes_the_connection(worker_process, bystander):
    sock = raw_socket(worker_process.port)
    reader = Reader(masked=False, max_message=2**20)
    empty = frame(OP_CONTINUATION, fin=False)
    sock.sendall(frame(OP_BINARY, fin=False) + empty * (MAX_FRAGMENTS - 1))
    sock.sendall(frame(OP_PING, b"alive?"))  # control frames may come between fragments
    assert next_event(sock, reader) == ("pong", b"alive?")
    sock.sendall(empty)
    kind, payload = next_event(sock, reader)
    assert kind == "close" and struct.unpack("!H", payload[:2])[0] == CLOSE_TOO_BIG, payload
    assert f"more than {MAX_FRAGMENTS:,} frames" in payload[2:].decode()
    sock.close()
    assert_serves(bystander)


def test_two_million_empty_fragments_hold_no_memory(worker_process, bystander):
    """They added 623 MB against a 1 MB message limit."""
    before = worker_process.rss_kb()
    sock = raw_socket(worker_process.port)
    empty = frame(OP_CONTINUATION, fin=False)
    chunk = empty * 65_536
    sent = 0
    try:
        sock.sendall(frame(OP_BINARY, fin=False))
        for _ in range(2_000_000 // 65_536):
            sock.sendall(chunk)
            sent += 65_536
    except OSError:  # the worker closed the connection
        pass
    sock.close()
    assert sent < 2_000_000 - 65_536, "the worker read every fragment"
    assert worker_process.rss_kb() - before < 10_000
    assert_serves(bystander)


def test_each_fragment_counts_against_the_message_limit():
    """With a 64 kB message limit, 1,000 one-byte fragments (64 bytes more each) are refused."""
    process = WorkerProcess("--id", "small", "--max-message-mb", str(64_000 / 2**20))
    try:
        sock = raw_socket(process.port)
        reader = Reader(masked=False, max_message=2**20)
        sock.sendall(frame(OP_BINARY, b"x", fin=False))
        sock.sendall(frame(OP_CONTINUATION, b"x", fin=False) * 999)
        kind, payload = next_event(sock, reader)
        assert kind == "close" and struct.unpack("!H", payload[:2])[0] == CLOSE_TOO_BIG
        assert "frames (each counted as 64 bytes more)" in payload[2:].decode(), payload
        sock.close()
        with process.connect() as worker:
            assert_serves(worker)
    finally:
        process.stop()
