"""The split tutorial's network (784-128-640 on alice | 640-10 on bob) trained for one epoch on
two `tether worker` processes, against the unsplit model trained locally in the same run; and
the bytes that cross the network per step against the floor (the activation forward and its
gradient back, plus the batch and labels the tutorial sends).

Same work, same setup: the local baseline trains the same model on the same batches with the
same number of torch threads as each worker computes with (the workers share the machine's
cores, as `tether demo`'s do). Split and local epochs interleave, and the ratio is the median
of the rounds' ratios.

Run: python benchmarks/bench_split.py [--batches 79] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn, optim

import tether as sy
import tether.transports.websocket.transport as net_client
from tether import datasets, transforms

TOKEN = "bench"


def _segments() -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 640), nn.ReLU()),
        nn.Sequential(nn.Linear(640, 10), nn.LogSoftmax(dim=1)),
    ]


# The two workers share this machine's cores, as `tether demo`'s workers do: with torch's
# default (every core each), their idle OpenMP threads spin on the cores the other needs.
WORKER_THREADS = max(1, (os.cpu_count() or 1) // 2)


def _worker(name: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "TETHER_TOKEN": TOKEN, "OMP_NUM_THREADS": str(WORKER_THREADS)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "worker",
            "--id",
            name,
            "--port",
            str(port),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _connect(name: str, port: int) -> sy.WebsocketClientWorker:
    deadline = time.time() + 30
    while True:
        try:
            return sy.connect(f"ws://127.0.0.1:{port}", token=TOKEN, id=name)
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def split_epoch(batches: list, alice, bob, sent: list[int]) -> float:
    models = _segments()
    split = sy.SplitNN(models, [alice, bob], [optim.SGD(m.parameters(), lr=0.03) for m in models])
    start = time.perf_counter()
    for images, labels in batches:
        split.zero_grads()
        loss = nn.NLLLoss()(split.forward(images.send(alice)), labels.send(bob))
        split.backward(loss)
        split.step()
        loss.detach().get()
    return time.perf_counter() - start


def local_epoch(batches: list) -> float:
    model = nn.Sequential(*_segments())
    opt = optim.SGD(model.parameters(), lr=0.03)
    start = time.perf_counter()
    for images, labels in batches:
        opt.zero_grad()
        loss = nn.NLLLoss()(model(images), labels)
        loss.backward()
        opt.step()
        loss.detach().item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=79, help="batches of 64 per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of epochs")
    args = parser.parse_args()
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    images, labels = datasets.materialize(datasets.MNIST(train=True, transform=t))
    images = images.view(len(images), -1)
    batches = list(zip(images.split(64), labels.split(64), strict=True))[: args.batches]
    processes = [_worker("alice", 18771), _worker("bob", 18772)]
    try:
        alice, bob = _connect("alice", 18771), _connect("bob", 18772)
        sent: list[int] = []
        encode = net_client.encode_parts
        net_client.encode_parts = lambda commands: (
            parts := encode(commands),
            sent.append(parts.nbytes),
        )[0]
        torch.set_num_threads(WORKER_THREADS)  # as each worker computes
        split_epoch(batches[:5], alice, bob, sent), local_epoch(batches[:5])  # warm up
        sent.clear()
        rounds = [
            (split_epoch(batches, alice, bob, sent), local_epoch(batches))
            for _ in range(args.repeats)
        ]
        net_client.encode_parts = encode
    finally:
        for process in processes:
            process.terminate()
    ratios = sorted(s / q for s, q in rounds)
    activation = 64 * 640 * 4
    floor = 2 * activation + 64 * 784 * 4 + 64 * 8  # activation, its gradient, batch, labels
    print(
        f"split network, {len(batches)} steps of 64 images, two worker processes on 127.0.0.1, "
        f"{WORKER_THREADS} torch thread(s) each and locally; {args.repeats} interleaved rounds:"
    )
    local, split = (statistics.median(r[i] for r in rounds) * 1e3 for i in (1, 0))
    print(f"  unsplit model, local       {local:8.1f} ms (median)")
    print(
        f"  SplitNN over the network   {split:8.1f} ms (median)   ratio "
        f"{statistics.median(ratios):.2f}x, median of the rounds "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f}x)"
    )
    per_step = sum(sent) / (len(batches) * args.repeats)
    print(
        f"  bytes sent per step (scientist to workers): {per_step / 1e3:.1f} kB; the data "
        f"the step must move (batch, labels, activation, gradient): {floor / 1e3:.1f} kB "
        f"(ratio {per_step / floor:.2f}, replies not counted)"
    )


if __name__ == "__main__":
    main()
