"""A federated epoch of the MNIST tutorial's loop (joe and jane, FederatedDataLoader, batch 64,
model.send / forward / backward / step / model.get per batch) against a plain PyTorch epoch on
the same 5,000 images in the same run.

Same work, same setup: the same model and optimizer on the same images, shuffled into batches of
64 each epoch (plain PyTorch gathers each batch by index; the loader gathers a worker's epoch
once and slices it), in the same process and thread with the same torch threads. Plain and
federated epochs interleave, and the ratio is the median of the rounds' ratios.

Run: python benchmarks/bench_federated.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn, optim

import tether as sy
from tether import datasets, transforms


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1)
    )


def plain_epoch(data: torch.Tensor, targets: torch.Tensor) -> float:
    model = _net()
    opt = optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for index in torch.randperm(len(data)).split(64):
        opt.zero_grad()
        F.nll_loss(model(data[index]), targets[index]).backward()
        opt.step()
    return time.perf_counter() - start


def federated_epoch(loader: sy.FederatedDataLoader) -> float:
    model = _net()
    opt = optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for data, target in loader:
        model.send(data.location)
        opt.zero_grad()
        F.nll_loss(model(data), target).backward()
        opt.step()
        model.get()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of epochs")
    args = parser.parse_args()
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train = datasets.MNIST(train=True, transform=t)
    data, targets = datasets.materialize(train)
    joe, jane = sy.VirtualWorker("joe"), sy.VirtualWorker("jane")
    loader = sy.FederatedDataLoader(train.federate((joe, jane)), batch_size=64, shuffle=True)
    plain_epoch(data, targets), federated_epoch(loader)  # warm up
    # Interleaved, so that both see the same moments of a drifting VM; the median of the
    # rounds' ratios is what the drift cannot skew either way.
    rounds = [(plain_epoch(data, targets), federated_epoch(loader)) for _ in range(args.repeats)]
    ratios = sorted(f / p for p, f in rounds)
    print(
        f"one epoch, 784-500-10 MLP, {len(data)} images, batch 64, {args.repeats} "
        "interleaved rounds:"
    )
    median = statistics.median
    print(f"  plain PyTorch            {median(p for p, _ in rounds) * 1e3:8.1f} ms (median)")
    print(
        f"  tether, joe + jane       {median(f for _, f in rounds) * 1e3:8.1f} ms (median)   "
        f"ratio {median(ratios):.2f}x, median of the rounds ({ratios[0]:.2f}-"
        f"{ratios[-1]:.2f}x; target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
