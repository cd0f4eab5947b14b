"""Core benchmarks: pointer-op cost on a VirtualWorker (absolute, no baseline), and a
tutorial-style MLP epoch through pointers against plain PyTorch doing the same work in the same
run.

Same work, same setup: the same model, batches, seed and optimizer, in the same process and
thread with the same torch threads; model and data are made (and sent) outside the timed loop on
both sides. Plain and pointer epochs interleave, and the ratio is the median of the rounds'
ratios.

Run: python benchmarks/bench_core.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import tether as sy
from tether.datasets import MNIST


def op_cost_us(serialize: bool, n: int = 20_000) -> tuple[float, float]:
    """Microseconds per pipelined `ptr + 1`, and per blocking round trip (`(ptr + 1).get()`)."""
    worker = sy.VirtualWorker(id=f"bench-{serialize}", serialize=serialize)
    x = torch.ones(4).send(worker)
    y = x
    start = time.perf_counter()
    for _ in range(n):
        y = x + 1
    worker.flush()
    pipelined = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n // 10):
        (x + 1).get()
    blocking = (time.perf_counter() - start) / (n // 10) * 1e6
    del y
    return pipelined, blocking


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))


def _batches(batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train = MNIST(train=True)
    data = (train.data.float() / 255 - 0.5) / 0.5
    return list(zip(data.split(batch_size), train.targets.split(batch_size), strict=True))


def plain_epoch(batches: list) -> float:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for data, target in batches:
        opt.zero_grad()
        F.cross_entropy(model(data), target).backward()
        opt.step()
    return time.perf_counter() - start


def pointer_epoch(batches: list, serialize: bool) -> float:
    """The tutorial's loop: model.send, forward, loss, backward, step, model.get per batch."""
    torch.manual_seed(0)
    worker = sy.VirtualWorker(id="bob", serialize=serialize)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    remote = [(d.send(worker), t.send(worker)) for d, t in batches]
    worker.flush()
    start = time.perf_counter()
    for data, target in remote:
        model.send(data.location)
        opt.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        opt.step()
        model.get()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of epochs")
    args = parser.parse_args()
    for serialize in (True, False):
        pipelined, blocking = op_cost_us(serialize)
        label = "serialization on " if serialize else "serialization off"
        print(
            f"pointer op, {label}: {pipelined:6.1f} us pipelined, {blocking:6.1f} us blocking "
            "round trip"
        )
    batches = _batches()
    plain_epoch(batches)  # warm up
    for serialize in (True, False):
        pointer_epoch(batches, serialize)
    # Interleaved, so that plain and pointer epochs see the same machine (a shared VM drifts):
    # each round's ratio compares epochs run moments apart, and the median of the rounds'
    # ratios is what a drifting machine cannot skew either way.
    times: dict = {"plain": [], True: [], False: []}
    for _ in range(args.repeats):
        times["plain"].append(plain_epoch(batches))
        for serialize in (True, False):
            times[serialize].append(pointer_epoch(batches, serialize))
    plain = statistics.median(times["plain"])
    print(
        f"MLP 784-500-10, 1 epoch on {sum(len(t) for _, t in batches)} MNIST images, "
        f"batch 64, {args.repeats} interleaved rounds:"
    )
    print(f"  plain PyTorch                   {plain * 1e3:8.1f} ms (median)")
    for serialize in (True, False):
        label = "on " if serialize else "off"
        ratios = sorted(p / q for p, q in zip(times[serialize], times["plain"], strict=True))
        print(
            f"  tether pointers, serialization {label} "
            f"{statistics.median(times[serialize]) * 1e3:8.1f} ms (median)   ratio "
            f"{statistics.median(ratios):.2f}x, median of the rounds "
            f"({ratios[0]:.2f}-{ratios[-1]:.2f}x; target <= 1.5x with serialization on)"
        )


if __name__ == "__main__":
    main()
