"""What tether's own Python costs per training batch: the tutorial loop of bench_core.py on a
model so small (8-6-3) that compute is nearly nothing, against plain PyTorch running the same
loop in the same run. Far less noisy than the MNIST epoch, so it shows changes of a few µs.

Same work, same setup: the same model, batches and optimizer, in the same process and thread.
Plain and pointer rounds interleave; the overhead is the median of the rounds' differences.

Run: python benchmarks/bench_overhead.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import tether as sy

BATCHES = 100


def _model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def _per_batch_us(step, batches: list) -> float:
    start = time.perf_counter()
    for data, target in batches:
        step(data, target)
    return (time.perf_counter() - start) / len(batches) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    args = parser.parse_args()
    torch.manual_seed(0)
    local = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(BATCHES)]
    worker = sy.VirtualWorker(id="bob")
    remote = [(d.send(worker), t.send(worker)) for d, t in local]

    plain_model, model = _model(), _model()
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def plain_step(data: torch.Tensor, target: torch.Tensor) -> None:
        plain_opt.zero_grad()
        F.cross_entropy(plain_model(data), target).backward()
        plain_opt.step()

    def pointer_step(data: sy.Pointer, target: sy.Pointer) -> None:
        model.send(worker)
        opt.zero_grad()
        F.cross_entropy(model(data), target).backward()
        opt.step()
        model.get()

    for _ in range(10):  # warm up
        _per_batch_us(plain_step, local), _per_batch_us(pointer_step, remote)
    plain, pointers = [], []
    for _ in range(args.rounds):
        plain.append(_per_batch_us(plain_step, local))
        pointers.append(_per_batch_us(pointer_step, remote))
    overhead = statistics.median(q - p for p, q in zip(plain, pointers, strict=True))
    print(f"8-6-3 MLP, batch 4, {BATCHES} batches, {args.rounds} interleaved rounds (medians):")
    print(f"  plain PyTorch               {statistics.median(plain):7.1f} µs per batch")
    print(f"  tether pointers             {statistics.median(pointers):7.1f} µs per batch")
    print(f"  tether's overhead           {overhead:7.1f} µs per batch")


if __name__ == "__main__":
    main()
