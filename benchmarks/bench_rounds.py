"""What a round of delegated training costs beyond the training itself, measured in one run.

Three `tether worker` processes (the tutorial's alice, bob, charlie on the MNIST sample) train
the tutorial's CNN, 10 batches of 32 per round, with the coordinator. Printed:

(a) round wall time / (slowest worker's local training time + moving the model at raw-socket
    speed)                                                                     target <= 1.2x
    - in-round floor: each worker's training time as it measured it in that round;
    - alone floor: each worker's training time measured with the other workers idle. On a
      machine with fewer cores than workers, concurrent training is slower than alone by
      cores' arithmetic (3 workers on 2 cores: >= 1.5x), not by anything tether does.
    The transfer is the model's bytes to a raw TCP echo process and back (the spec goes out,
    the weights come back).

Run: python benchmarks/bench_rounds.py [--rounds 40] [--alone 5]
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

from tether.federated.coordinator import Coordinator, Net, dataset_pointers, remote_fit
from tether.federated.demo import tutorial_workers
from tether.federated.modelspec import describe
from tether.federated.training import TrainConfig
from tether.net import connect

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


def raw_transfer_seconds(nbytes: int, repeat: int = 30) -> float:
    """Median time to move `nbytes` to an echo process and back over a plain TCP socket."""
    echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    try:
        port = int(echo.stdout.readline())
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = os.urandom(nbytes)
        back = memoryview(bytearray(nbytes))
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            sock.sendall(nbytes.to_bytes(8, "little") + payload)
            got = 0
            while got < nbytes:
                got += sock.recv_into(back[got:])
            times.append(time.perf_counter() - start)
        sock.close()
        return statistics.median(times)
    finally:
        echo.terminate()
        echo.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--alone", type=int, default=5, help="fits per worker, measured alone")
    args = parser.parse_args()
    config = TrainConfig(batch_size=32, max_batches=10, optimizer_args={"lr": 0.1}, seed=1)
    with tutorial_workers(Path(tempfile.mkdtemp(prefix="bench-rounds-")), evaluator=False) as (
        workers,
        _,
        token,
    ):
        handles = {n: connect(w.url, token=token, id=n) for n, w in workers.items()}
        torch.manual_seed(1)
        model = Net()
        result = Coordinator(
            model, handles, config=config, rounds=args.rounds, log=lambda line: None
        ).run()
        rounds = result.history[1:]  # round 1 warms up every process
        walls = [r["train_seconds"] for r in rounds]
        in_round = [max(t["seconds"] for t in r["train"].values()) for r in rounds]
        spec = describe(model)
        alone = {}
        for name, handle in handles.items():  # one worker at a time; the others idle
            pointers = dataset_pointers(handle.client, "mnist")
            alone[name] = statistics.median(
                remote_fit(handle.client, pointers, spec, config)["seconds"]
                for _ in range(args.alone)
            )
    nbytes = sum(v.numel() * v.element_size() for v in spec["state"].values())
    transfer = raw_transfer_seconds(nbytes)
    wall, fit_in_round, fit_alone = (
        statistics.median(walls),
        statistics.median(in_round),
        max(alone.values()),
    )
    print(
        f"{args.rounds} rounds, 3 worker processes, {os.cpu_count()} cores; model "
        f"{nbytes / 2**20:.2f} MiB; medians over rounds 2-{args.rounds}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"round wall time (send, train, answer, FedAvg):      {1000 * wall:8.1f} ms")
    print(f"slowest worker's training, in the round:            {1000 * fit_in_round:8.1f} ms")
    each = ", ".join(f"{n} {1000 * s:.0f}" for n, s in alone.items())
    print(
        f"slowest worker's training, alone:                   {1000 * fit_alone:8.1f} ms "
        f"({each} ms)"
    )
    print(f"model out and back over a raw TCP socket:           {1000 * transfer:8.1f} ms")
    print(
        f"(a) round / (in-round training + transfer) = {wall / (fit_in_round + transfer):.2f}x"
        "   target <= 1.2x"
    )
    print(
        f"(a) round / (alone training + transfer)    = {wall / (fit_alone + transfer):.2f}x"
        f"   ({os.cpu_count()} cores for 3 concurrent workers)"
    )
    shared = fit_alone * max(1.0, len(alone) / (os.cpu_count() or 1))
    print(
        f"(a) round / (alone training x {len(alone)} workers / {os.cpu_count()} cores + "
        f"transfer) = {wall / (shared + transfer):.2f}x"
    )


if __name__ == "__main__":
    main()
