"""Network worker vs plain baselines doing the same work in the same setup, in the same run.

Same work, same setup: each baseline's server is its own process, as the worker is, and each
baseline's buffers are as cheap as they can be. Rounds interleave ours and the baseline, and a
ratio is the median of the rounds' ratios (each round compares runs made moments apart).

(a) blocking round trip of a small op, `(x + 1).get()`, vs a websocket echo of a message of the
    same size: the same `websockets` asyncio server as the worker's, and a minimal client on a
    raw socket (hand-framed masked frames after the HTTP upgrade; no library, no thread
    hand-off: the least a websocket round trip can cost)                     target <= 2x
(b) pipelined pointer ops, `y = x + 1` in a loop then one flush (an absolute target; no
    baseline)                                                                target >= 20,000/s
(c) a 256 MB tensor sent and fetched back, vs a raw TCP socket moving the same bytes to an echo
    process and back, both ends receiving into buffers allocated once and reused (tether's
    receive buffers are reused too)                                          target >= 0.5x

Run: `python benchmarks/bench_transport.py [--repeats 9] [--only a|b|c]`
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch

import tether  # noqa: F401  (hooks torch)
from tether.transports.websocket import connect
from tether.wire import Call, Delete, Get, Ref, encode_parts

BIG = 256 * 2**20
TOKEN = "bench-token"

_WS_ECHO = """
import asyncio
from websockets.asyncio.server import serve
async def echo(ws):
    async for message in ws:
        await ws.send(message)
async def main():
    async with serve(echo, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"""

_TCP_ECHO = """
import socket, numpy as np
buffer = None
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    head = conn.recv(8, socket.MSG_WAITALL)
    if len(head) < 8:
        break
    n = int.from_bytes(head, "little")
    if buffer is None or len(buffer) != n:  # allocated once, reused every round
        buffer = memoryview(np.empty(n, np.uint8)).cast("B")
    got = 0
    while got < n:
        got += conn.recv_into(buffer[got:])
    conn.sendall(buffer)
"""


@contextmanager
def process(args: list[str], ready_prefix: str = ""):
    """A server process; yields the port it printed."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{args} exited before it was ready")
            if line.startswith(ready_prefix):
                break
        yield int(line.rsplit(":", 1)[-1]) if ready_prefix else int(line)
    finally:
        proc.terminate()
        proc.wait(10)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Each run once to warm up, then `rounds` rounds of each in turn: seconds per run."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(run))
    return times


def raw_ws_client(port: int) -> socket.socket:
    """A websocket client on a bare socket: the HTTP upgrade by hand, nothing else."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def masked_frame(message: bytes) -> bytes:
    """A client's binary frame (FIN, opcode 2, masked, 16-bit length) carrying `message`."""
    assert 126 <= len(message) < 2**16
    mask = os.urandom(4)
    keys = np.frombuffer(mask * (len(message) // 4 + 1), np.uint8)[: len(message)]
    payload = (np.frombuffer(message, np.uint8) ^ keys).tobytes()
    return struct.pack("!BBH", 0x82, 0x80 | 126, len(message)) + mask + payload


def small_op(url: str, rounds: int) -> None:
    worker = connect(url, token=TOKEN)
    x = torch.ones(10).send(worker)
    size = encode_parts(
        [Call("operator.add", [Ref(x.id), 1], {}, 2**40), Get(2**40), Delete([2**40])]
    ).nbytes
    n = 1000
    message = os.urandom(size)
    request = masked_frame(message)  # masked once: the message is the same every time
    reply = struct.pack("!BBH", 0x82, 126, size) + message  # a server's frame is unmasked
    back = bytearray(len(reply))
    view = memoryview(back)

    def ours() -> None:
        for _ in range(n):
            (x + 1).get()

    with process([sys.executable, "-c", _WS_ECHO]) as port:
        sock = raw_ws_client(port)

        def echo() -> None:
            for _ in range(n):
                sock.sendall(request)
                got = 0
                while got < len(reply):
                    got += sock.recv_into(view[got:])

        times = interleaved({"ours": ours, "echo": echo}, rounds)
        assert back == reply, "the echo server answered something else"
        sock.close()
    worker.close()
    ratios = sorted(o / e for o, e in zip(times["ours"], times["echo"], strict=True))
    print(
        f"(a) small op round trip, (x + 1).get() ({size}-byte frame), {rounds} interleaved "
        f"rounds of {n}: {statistics.median(times['ours']) / n * 1e6:.0f} us (median)"
    )
    print(
        f"    websocket echo, raw-socket client: {statistics.median(times['echo']) / n * 1e6:.0f}"
        f" us   ratio {statistics.median(ratios):.2f}x, median of the rounds "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f}x; target <= 2x)"
    )


def pipelined(url: str, rounds: int) -> None:
    worker = connect(url, token=TOKEN)
    x = torch.ones(10).send(worker)
    n = 20_000

    def ops() -> None:
        for _ in range(n):
            y = x + 1  # noqa: F841  (dropping it frees it remotely)
        worker.flush()

    ops()
    rate = n / statistics.median(timed(ops) for _ in range(rounds))
    worker.close()
    print(f"(b) pipelined pointer ops: {rate:,.0f} ops/s, median of {rounds}   (target >= 20,000)")


def bulk(url: str, rounds: int) -> None:
    worker = connect(url, token=TOKEN)
    tensor = torch.randn(BIG // 4)
    payload = tensor.numpy().view(np.uint8)
    back = memoryview(np.empty(BIG, np.uint8)).cast("B")

    def ours() -> None:
        assert tensor.send(worker).get().shape == tensor.shape

    with process([sys.executable, "-c", _TCP_ECHO]) as port:
        sock = socket.create_connection(("127.0.0.1", port))

        def raw() -> None:
            sock.sendall(BIG.to_bytes(8, "little"))
            sock.sendall(payload)
            got = 0
            while got < BIG:
                got += sock.recv_into(back[got:])

        times = interleaved({"ours": ours, "raw": raw}, rounds)
        sock.close()
    worker.close()
    ratios = sorted(r / o for o, r in zip(times["ours"], times["raw"], strict=True))
    ours_s, raw_s = statistics.median(times["ours"]), statistics.median(times["raw"])
    print(
        f"(c) 256 MB tensor sent and fetched, {rounds} interleaved rounds: {ours_s * 1e3:.0f} ms"
        f" (median; {2 * BIG / ours_s / 1e9:.2f} GB/s)"
    )
    print(
        f"    raw TCP echo, buffers reused: {raw_s * 1e3:.0f} ms   speed ratio "
        f"{statistics.median(ratios):.2f}x, median of the rounds ({ratios[0]:.2f}-"
        f"{ratios[-1]:.2f}x; target >= 0.5x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--only", choices=["a", "b", "c"], help="run one part")
    args = parser.parse_args()
    worker = [
        sys.executable,
        "-m",
        "tether.cli",
        "worker",
        "--id",
        "bench",
        "--port",
        "0",
        "--token",
        TOKEN,
        "--quiet",
        "--max-message-mb",
        "1024",
    ]
    with process(worker, "worker bench listening on") as port:
        url = f"ws://127.0.0.1:{port}"
        for part, run in (("a", small_op), ("b", pipelined), ("c", bulk)):
            if args.only in (None, part):
                run(url, args.repeats)


if __name__ == "__main__":
    main()
