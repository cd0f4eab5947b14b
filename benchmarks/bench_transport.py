"""Network worker vs the plain baselines, measured in the same run.

(a) blocking round trip of a small op, `(x + 1).get()`, vs a websocket echo of a message of the
    same size (a `websockets` echo server; two clients: the `websockets` sync client, and a
    minimal client on a raw socket)                                          target <= 2x
(b) pipelined pointer ops, `y = x + 1` in a loop then one flush              target >= 20,000 ops/s
(c) a 256 MB tensor sent and fetched back, vs a raw TCP socket moving the same bytes to an echo
    server and back (into fresh buffers, as a stored tensor needs)            target >= 0.5x

Every server is a separate process, as a worker is. Run: `python benchmarks/bench_transport.py`
(`--quick` for fewer repetitions).
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from websockets.sync.client import connect as ws_connect

import tether  # noqa: F401  (hooks torch)
from tether.net import connect
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
import socket, sys, numpy as np
reuse = sys.argv[1] == "reuse"
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
    if not (reuse and buffer is not None and len(buffer) == n):
        buffer = memoryview(np.empty(n, np.uint8)).cast("B")
    buf = buffer
    got = 0
    while got < n:
        got += conn.recv_into(buf[got:])
    conn.sendall(buf)
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


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def raw_ws_client(port: int) -> socket.socket:
    """A websocket client on a bare socket: the least a websocket round trip can cost."""
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
    return sock


def small_op(url: str, repeat: int) -> None:
    """Rounds interleave ours and the two echoes, best of each, so all see the same moments."""
    worker = connect(url, token=TOKEN)
    x = torch.ones(10).send(worker)
    frame = encode_parts(
        [Call("operator.add", [Ref(x.id), 1], {}, 2**40), Get(2**40), Delete([2**40])]
    ).nbytes
    n = 2000 if repeat > 1 else 500

    def ops() -> None:
        for _ in range(n):
            (x + 1).get()

    with (
        process([sys.executable, "-c", _WS_ECHO]) as port,
        ws_connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws,
    ):
        message = os.urandom(frame)
        sock = raw_ws_client(port)
        request = struct.pack("!BBH", 0x82, 0x80 | 126, frame) + bytes(4) + message
        reply = len(request) - 4

        def lib_echo() -> None:
            for _ in range(n):
                ws.send(message)
                ws.recv()

        def raw_echo() -> None:
            for _ in range(n):
                sock.sendall(request)
                got = 0
                while got < reply:
                    got += len(sock.recv(65536))

        runs = {"ours": ops, "lib": lib_echo, "raw": raw_echo}
        for run in runs.values():  # warm up
            run()
        times = {name: [] for name in runs}
        for _ in range(repeat):
            for name, run in runs.items():
                times[name].append(best(run, 1) / n)
        sock.close()
    worker.close()
    ours, lib, raw = (min(times[name]) for name in runs)
    print(
        f"(a) small op round trip, (x + 1).get() ({frame}-byte frame), best of {repeat} "
        f"interleaved rounds: {ours * 1e6:.0f} us"
    )
    print(
        f"    websocket echo, websockets sync client:  {lib * 1e6:.0f} us   "
        f"ratio {ours / lib:.2f}x  (target <= 2x)"
    )
    print(
        f"    websocket echo, minimal raw-socket client: {raw * 1e6:.0f} us   "
        f"ratio {ours / raw:.2f}x"
    )


def pipelined(url: str, repeat: int) -> None:
    worker = connect(url, token=TOKEN)
    x = torch.ones(10).send(worker)
    n = 20_000

    def ops() -> None:
        for _ in range(n):
            y = x + 1  # noqa: F841  (dropping it frees it remotely)
        worker.flush()

    ops()
    rate = n / best(ops, repeat)
    worker.close()
    print(f"(b) pipelined pointer ops: {rate:,.0f} ops/s   (target >= 20,000)")


def bulk(url: str, repeat: int) -> None:
    """Rounds interleave ours and the baselines, best of each: on a VM, fresh memory costs very
    different amounts from one moment to the next, and this way all see the same moments."""
    worker = connect(url, token=TOKEN)
    tensor = torch.randn(BIG // 4)
    payload = tensor.numpy().view(np.uint8)
    reused = memoryview(np.empty(BIG, np.uint8)).cast("B")

    def ours() -> None:
        back = tensor.send(worker).get()
        assert back.shape == tensor.shape

    with (
        process([sys.executable, "-c", _TCP_ECHO, "fresh"]) as fresh_port,
        process([sys.executable, "-c", _TCP_ECHO, "reuse"]) as reuse_port,
    ):
        fresh_sock = socket.create_connection(("127.0.0.1", fresh_port))
        reuse_sock = socket.create_connection(("127.0.0.1", reuse_port))

        def raw(sock: socket.socket, into: memoryview | None) -> None:
            sock.sendall(BIG.to_bytes(8, "little"))
            sock.sendall(payload)
            back = into if into is not None else memoryview(np.empty(BIG, np.uint8)).cast("B")
            got = 0
            while got < BIG:
                got += sock.recv_into(back[got:])

        times = {"ours": [], "fresh": [], "reused": []}
        for _ in range(repeat + 2):
            times["ours"].append(best(ours, 1))
            times["fresh"].append(best(lambda: raw(fresh_sock, None), 1))
            times["reused"].append(best(lambda: raw(reuse_sock, reused), 1))
        fresh_sock.close()
        reuse_sock.close()
    worker.close()
    t_ours, t_fresh, t_reused = (min(times[k]) for k in ("ours", "fresh", "reused"))
    print(
        f"(c) 256 MB tensor sent and fetched: {t_ours * 1e3:.0f} ms "
        f"({2 * BIG / t_ours / 1e9:.2f} GB/s; rounds: "
        f"{', '.join(f'{t * 1e3:.0f}' for t in times['ours'])} ms)"
    )
    print(
        f"    raw TCP echo into fresh buffers (as a stored tensor needs): {t_fresh * 1e3:.0f} ms"
        f"   speed ratio {t_fresh / t_ours:.2f}x  (target >= 0.5x)"
    )
    print(
        f"    raw TCP echo into reused buffers (no allocation at all):    {t_reused * 1e3:.0f} ms"
        f"   speed ratio {t_reused / t_ours:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=["a", "b", "c"], help="run one part")
    args = parser.parse_args()
    repeat = 1 if args.quick else 5
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
                run(url, repeat)


if __name__ == "__main__":
    main()
