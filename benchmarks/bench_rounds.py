"""What a round of delegated training costs beyond the training itself, measured in one run.

Three `tether worker` processes (the tutorial's alice, bob, charlie on the MNIST sample) train
the tutorial's CNN, 10 batches of 32 per round, with the coordinator. Printed:

    round wall time / (slowest worker's training alone + moving the model at raw-socket speed)
                                                                               target <= 1.2x
The floor is the same work in the same setup: before each round, each worker process runs the
round's training once with the other workers idle (the same process and threads as in the
round), and the model's bytes go to a raw TCP echo process and back (the spec goes out, the
weights come back; the echo reuses its buffer). Floor and round interleave, and the ratio is the
median of the rounds' ratios. On a machine with fewer cores than workers, a round's concurrent
training is slower than alone by the cores' arithmetic (3 workers on 2 cores: >= 1.5x); the
floor does not excuse that.

Run: python benchmarks/bench_rounds.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tether.cli.demo import tutorial_workers
from tether.federated.coordinator import Coordinator
from tether.federated.delegated.modelspec import describe, with_state
from tether.federated.delegated.remote import dataset_pointers, remote_fit
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import Net
from tether.transports.websocket import connect

_ECHO = """
import socket
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = memoryview(bytearray(1 << 26))
while True:
    head = conn.recv(8, socket.MSG_WAITALL)
    if len(head) < 8:
        break
    n, got = int.from_bytes(head, "little"), 0
    while got < n:
        got += conn.recv_into(buf[got:n])
    conn.sendall(buf[:n])
"""


class RawTransfer:
    """Moves `nbytes` to an echo process and back over a plain TCP socket."""

    def __init__(self, nbytes: int) -> None:
        self.echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE)
        self.sock = socket.create_connection(("127.0.0.1", int(self.echo.stdout.readline())))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.message = nbytes.to_bytes(8, "little") + os.urandom(nbytes)
        self.back = memoryview(bytearray(nbytes))

    def seconds(self) -> float:
        start = time.perf_counter()
        self.sock.sendall(self.message)
        got = 0
        while got < len(self.back):
            got += self.sock.recv_into(self.back[got:])
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()
        self.echo.terminate()
        self.echo.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    config = TrainConfig(batch_size=32, max_batches=10, optimizer_args={"lr": 0.1}, seed=1)
    torch.manual_seed(1)
    model = Net()
    nbytes = sum(v.numel() * v.element_size() for v in describe(model)["state"].values())
    transfer = RawTransfer(nbytes)
    floors: list[dict] = []
    with tutorial_workers(Path(tempfile.mkdtemp(prefix="bench-rounds-")), evaluator=False) as (
        workers,
        _,
        token,
    ):
        handles = {n: connect(w.url, token=token, id=n) for n, w in workers.items()}
        pointers = {n: dataset_pointers(h.client, "mnist") for n, h in handles.items()}

        def floor(line: str) -> None:
            """Before each round (the coordinator logs this line, then starts the round's
            clock): each worker trains the round's model alone, then the raw transfer."""
            if line.startswith("Training round"):
                spec = with_state(coordinator.spec, coordinator.state)
                alone = {
                    n: remote_fit(h.client, pointers[n], spec, config)["seconds"]
                    for n, h in handles.items()
                }
                floors.append({"alone": alone, "transfer": transfer.seconds()})

        coordinator = Coordinator(model, handles, config=config, rounds=args.rounds, log=floor)
        history = coordinator.run().history
    transfer.close()
    # Round 1 warms up every process.
    walls = [r["train_seconds"] for r in history[1:]]
    in_round = [max(t["seconds"] for t in r["train"].values()) for r in history[1:]]
    alone = [max(f["alone"].values()) for f in floors[1:]]
    moved = [f["transfer"] for f in floors[1:]]
    ratios = sorted(w / (a + t) for w, a, t in zip(walls, alone, moved, strict=True))
    median = statistics.median
    print(
        f"{args.rounds} rounds, 3 worker processes, {os.cpu_count()} cores; model "
        f"{nbytes / 2**20:.2f} MiB; medians over rounds 2-{args.rounds}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"round wall time (send, train, answer, FedAvg):  {1000 * median(walls):8.1f} ms")
    print(f"slowest worker's training, alone:               {1000 * median(alone):8.1f} ms")
    print(f"slowest worker's training, in the round:        {1000 * median(in_round):8.1f} ms")
    print(f"model out and back over a raw TCP socket:       {1000 * median(moved):8.1f} ms")
    print(
        f"round / (training alone + transfer) = {median(ratios):.2f}x, median of the rounds "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f}x; target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
