"""Encrypted training and inference of PySyft Part 12 bis's MLP (784-128-64-10): SMPC tensors
on two VirtualWorkers and a crypto provider, against plain PyTorch in the same run.

- step: one training step on a batch of 64, as the tutorial writes it (fixed precision 3,
  MSE against one-hot targets, `.refresh()`, SGD at lr 0.02; the data shared with
  requires_grad=True). The plain step is the same code on plain tensors (the data requiring
  grad too). Rounds alternate the two; the ratio is the median over rounds of the encrypted
  step's time over the plain step's of that round (the median of 20), in wall-clock time and
  in CPU time: on a shared machine the wall clock of a 200 ms step counts the time other
  processes hold the cores, which a 1 ms step mostly escapes, so CPU time is the steadier
  measure of what a step costs. Both include everything a step does: the
  provider dealing its triples, every command and share sent to a worker through the real
  wire format (what the scientist fetches to open, a worker in this process lends, as it
  lends `model.get()` its tensors: see docs/smpc.md, "Speed").
- inference: the MLP trained in plain PyTorch (3 epochs on the 5,000-image sample), then
  shared and run encrypted on the first 1,000 test images; the share of its predictions that
  equal plain PyTorch's.
- wire: the bytes a step's frames and answers take in the wire format, per worker (what a
  network transport would carry).
- accuracy (--accuracy): the tutorial's run, 10 epochs on 640 images
  (examples/encrypted_mnist.py does the same, printing as the notebook prints).
- breakdown (--breakdown): where a step's CPU time goes. Each op a node runs is timed (its own
  time, by op-table path); the rest of the step is the round trips and commands themselves
  (the wire format, the nodes' dispatch and stores, the scientist's Python). The ops alone,
  against the plain step, are the floor of the ratio before any round trip.

`--threads 1` (the default) runs torch on one thread for both sides: on this shared VM a
second thread's waits make every elementwise op noisy (docs/smpc.md, "Speed").

Run: python benchmarks/bench_smpc.py [--repeats 5] [--threads 1] [--accuracy] [--breakdown]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn, optim

import tether as sy
from tether.datasets import MNIST, materialize
from tether.datasets.mnist import MEAN, STD
from tether.ops import table
from tether.transforms import Compose, Normalize, ToTensor
from tether.wire import encode_parts

BATCH, LR = 64, 0.02


class Net(nn.Module):
    """Part 12 bis's model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def mnist(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    transform = Compose([ToTensor(), Normalize((MEAN,), (STD,))])
    return materialize(MNIST(root=None, train=train, transform=transform))


def step(model, optimizer, data, target) -> tuple[float, float]:
    """One encrypted step: its wall-clock and CPU seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad()
    loss = ((model(data) - target) ** 2).sum().refresh() / BATCH
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu


def plain_step(model, optimizer, data, target) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad()
    loss = ((model(data) - target) ** 2).sum() / BATCH
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu


def on_shares(model: Net, workers, provider, data, target) -> tuple:
    """The tutorial's training set-up on shares: the model, its optimizer, the batch, the
    targets (all shared with requires_grad=True, as the tutorial shares them)."""
    shared = model.fix_precision().share(*workers, crypto_provider=provider, requires_grad=True)
    opt = optim.SGD(shared.parameters(), lr=LR).fix_precision()
    x = data.fix_precision().share(*workers, crypto_provider=provider, requires_grad=True)
    y = target.fix_precision().share(*workers, crypto_provider=provider, requires_grad=True)
    return shared, opt, x, y


def bench_step(repeats: int, workers, provider, data, target) -> None:
    plain = Net()
    shared, shared_opt, x, y = on_shares(copy.deepcopy(plain), workers, provider, data, target)
    plain_opt = optim.SGD(plain.parameters(), lr=LR)
    plain_x = data.clone().requires_grad_(True)
    step(shared, shared_opt, x, y)  # warm-up
    for _ in range(20):
        plain_step(plain, plain_opt, plain_x, target)
    # Per round, wall clock and CPU time: (plain, encrypted, ratio) each.
    rounds: dict[str, list[tuple[float, float, float]]] = {"wall": [], "CPU": []}
    for _ in range(repeats):
        plains = [plain_step(plain, plain_opt, plain_x, target) for _ in range(20)]
        encrypted = step(shared, shared_opt, x, y)
        for i, clock in enumerate(rounds):
            p = statistics.median(t[i] for t in plains)
            rounds[clock].append((p, encrypted[i], encrypted[i] / p))
    for clock, found in rounds.items():
        print(
            f"training step, batch {BATCH}, {clock} time: "
            f"plain {statistics.median(r[0] for r in found) * 1e3:.2f} ms, "
            f"encrypted {statistics.median(r[1] for r in found) * 1e3:.0f} ms: "
            f"{statistics.median(r[2] for r in found):.0f}x "
            f"(rounds: {', '.join(f'{r[2]:.0f}' for r in found)})"
        )


def bench_wire(workers, provider, data, target, steps: int = 5) -> None:
    """The bytes a training step puts through the wire format, per worker and direction: every
    frame a node runs and every answer it gives, as their encoded size (what a network
    transport would carry)."""
    shared, opt, x, y = on_shares(Net(), workers, provider, data, target)
    step(shared, opt, x, y)
    counted: dict[str, list[int]] = {}
    for worker in (*workers, provider):
        node, run = worker.node, worker.node.run
        tally = counted[worker.id] = [0, 0]

        def counting(frame, client="local", *, lend=frozenset(), run=run, tally=tally):
            tally[0] += frame.nbytes
            answer = run(frame, client, lend=lend)
            # What a network transport carries: a lent value (tether.transports.inprocess)
            # leaves the encoded replies here, but not there.
            tally[1] += answer.parts().nbytes + encode_parts(list(answer.lent.values())).nbytes
            return answer

        node.run = counting
    try:
        for _ in range(steps):
            step(shared, opt, x, y)
    finally:
        for worker in (*workers, provider):
            del worker.node.run
    each = ", ".join(
        f"{name} {sent / steps / 1e6:.2f} MB in, {answered / steps / 1e6:.2f} MB out"
        for name, (sent, answered) in counted.items()
    )
    total = sum(sum(t) for t in counted.values()) / steps / 1e6
    print(f"wire per training step: {total:.1f} MB ({each})")


@contextlib.contextmanager
def timing_ops(spent: collections.Counter, calls: collections.Counter) -> Iterator[None]:
    """Every op in the op table timed while inside (CPU seconds and calls, by path), then the
    table as it was."""
    kept = dict(table.ALLOWLIST)

    def timed(fn, path):
        def run(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[path] += time.process_time() - start
                calls[path] += 1

        return run

    for path, entry in kept.items():
        table.ALLOWLIST[path] = dataclasses.replace(entry, fn=timed(entry.fn, path))
    try:
        yield
    finally:
        table.ALLOWLIST.update(kept)


def bench_breakdown(workers, provider, data, target, steps: int = 30) -> None:
    """Where an encrypted step's CPU time goes: the ops the nodes run, by op, and the rest (the
    round trips and commands); and the ops alone against the plain step of the same run."""
    shared, opt, x, y = on_shares(Net(), workers, provider, data, target)
    plain = Net()
    plain_opt, plain_x = optim.SGD(plain.parameters(), lr=LR), data.clone().requires_grad_(True)
    for _ in range(3):
        step(shared, opt, x, y)
    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    frames = [0, 0]  # round trips, commands
    for worker in (*workers, provider):
        node, execute = worker.node, worker.node._execute

        def counting(commands, client, execute=execute):
            frames[0] += 1
            frames[1] += len(commands)
            return execute(commands, client)

        node._execute = counting
    total, plains = 0.0, []
    try:
        with timing_ops(spent, calls):
            for _ in range(steps):  # each step followed by 20 plain ones, as in bench_step
                total += step(shared, opt, x, y)[1] / steps
                plains += [plain_step(plain, plain_opt, plain_x, target)[1] for _ in range(20)]
    finally:
        for worker in (*workers, provider):
            del worker.node._execute
    plain_ms = statistics.median(plains) * 1e3
    ops = sum(spent.values()) / steps
    print(
        f"where a step goes (CPU, {steps} steps, each op timed): {total * 1e3:.1f} ms = "
        f"the ops on the nodes {ops * 1e3:.1f} ms + the rest {(total - ops) * 1e3:.1f} ms "
        f"({frames[0] / steps:.0f} round trips, {frames[1] / steps:.0f} commands); the plain "
        f"step {plain_ms:.2f} ms, so the ops alone are {ops * 1e3 / plain_ms:.0f}x it"
    )
    for path, seconds in spent.most_common():
        if seconds / steps >= 1e-4:
            print(f"  {seconds / steps * 1e3:5.2f} ms  {calls[path] / steps:3.0f} calls  {path}")


def bench_inference(workers, provider) -> None:
    data, targets = mnist(train=True)
    torch.manual_seed(0)
    model = Net()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for index in torch.randperm(len(data)).split(BATCH):
            opt.zero_grad()
            F.cross_entropy(model(data[index]), targets[index]).backward()
            opt.step()
    test, test_targets = mnist(train=False)
    test, test_targets = test[:1000], test_targets[:1000]
    with torch.no_grad():
        plain_pred = model(test).argmax(dim=1)
        start = time.perf_counter()
        model.fix_precision().share(*workers, crypto_provider=provider)
        encrypted = []
        for batch in test.split(250):
            shared = batch.fix_precision().share(*workers, crypto_provider=provider)
            encrypted.append(model(shared).argmax(dim=1).get().float_precision().long())
        seconds = time.perf_counter() - start
    pred = torch.cat(encrypted)
    agree = float((pred == plain_pred).double().mean())
    print(
        f"encrypted inference, 1000 test images: {agree:.1%} equal plain PyTorch's predictions "
        f"(accuracy {float((pred == test_targets).double().mean()):.1%} encrypted, "
        f"{float((plain_pred == test_targets).double().mean()):.1%} plain), {seconds:.1f} s"
    )


def bench_accuracy(workers, provider) -> None:
    torch.manual_seed(1)
    data, targets = mnist(train=True)
    batches = [
        (
            data[i : i + BATCH]
            .fix_precision()
            .share(*workers, crypto_provider=provider, requires_grad=True),
            F.one_hot(targets[i : i + BATCH], 10)
            .float()
            .fix_precision()
            .share(*workers, crypto_provider=provider, requires_grad=True),
        )
        for i in range(0, 640, BATCH)
    ]
    model = Net().fix_precision().share(*workers, crypto_provider=provider, requires_grad=True)
    opt = optim.SGD(model.parameters(), lr=LR).fix_precision()
    start = time.perf_counter()
    for _ in range(10):
        for x, y in batches:
            step(model, opt, x, y)
    with torch.no_grad():
        correct = 0
        for i in range(0, 640, BATCH):
            x = data[i : i + BATCH].fix_precision().share(*workers, crypto_provider=provider)
            pred = model(x).argmax(dim=1).get().float_precision().long()
            correct += int((pred == targets[i : i + BATCH]).sum())
    print(
        f"Part 12 bis, 10 epochs on 640 images: {correct}/640 ({correct / 6.4:.0f}%) on them "
        f"(the tutorial: 89%), {time.perf_counter() - start:.0f} s"
    )


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=5)
    cli.add_argument("--threads", type=int, default=1)
    cli.add_argument("--accuracy", action="store_true", help="also train 10 epochs (minutes)")
    cli.add_argument("--breakdown", action="store_true", help="also time a step's ops by op")
    args = cli.parse_args()
    torch.set_num_threads(args.threads)
    hook = sy.TorchHook(torch)
    workers = [sy.VirtualWorker(hook, id="worker1"), sy.VirtualWorker(hook, id="worker2")]
    provider = sy.VirtualWorker(hook, id="crypto_provider")
    data, targets = mnist(train=True)
    batch, target = data[:BATCH], F.one_hot(targets[:BATCH], 10).float()
    bench_step(args.repeats, workers, provider, batch, target)
    bench_wire(workers, provider, batch, target)
    bench_inference(workers, provider)
    if args.breakdown:
        bench_breakdown(workers, provider, batch, target)
    if args.accuracy:
        bench_accuracy(workers, provider)


if __name__ == "__main__":
    main()
