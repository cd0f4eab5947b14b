"""Duet benchmarks, owner and network service in their own processes, every ratio against a
baseline measured in the same run:

- one epoch of the tutorial's SyNet on an MNIST subset, trained through the duet (data on the
  owner, driven op by op from here) against plain PyTorch on the same data, seed and order;
- a blocking round trip (`(ptr + 1).get()`) through the relay against a direct connection, and
  the same for a get the owner's handler approves (pushed at once; PySyft polled each second);
- copying a 9216x96 float32 tensor to the owner and back (PySyft's Duet took 45 s);
- how soon a scientist blocked in a get has the value once the owner accepts by hand.

Run: python benchmarks/bench_duet.py [--batches 16] [--repeats 3] [--threads 1]

Both sides compute with the same number of threads (default 1): on a small shared machine,
OpenMP threads that spin while another process holds a core make multi-threaded epochs swing
tenfold, which would drown the comparison.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import tether as sy
from tether.datasets import MNIST
from tether.duet.session import start_duet
from tether.transforms import Compose, Normalize, ToTensor

BATCH = 64


class SyNet(sy.Module):
    """The tutorial's model."""

    def __init__(self, torch_ref) -> None:
        super().__init__(torch_ref=torch_ref)
        self.conv1 = self.torch_ref.nn.Conv2d(1, 32, 3, 1)
        self.conv2 = self.torch_ref.nn.Conv2d(32, 64, 3, 1)
        self.dropout = self.torch_ref.nn.Dropout2d(0.25)
        self.fc1 = self.torch_ref.nn.Linear(9216, 128)
        self.fc2 = self.torch_ref.nn.Linear(128, 10)

    def forward(self, x):
        nn_f = self.torch_ref.nn.functional
        x = nn_f.max_pool2d(nn_f.relu(self.conv2(nn_f.relu(self.conv1(x)))), 2)
        x = self.torch_ref.flatten(self.dropout(x), 1)
        x = self.fc2(self.dropout(nn_f.relu(self.fc1(x))))
        return nn_f.log_softmax(x, dim=1)


def _subset(samples: int) -> torch.utils.data.Dataset:
    mnist = MNIST(train=True, transform=Compose([ToTensor(), Normalize(0.1307, 0.3081)]))
    return torch.utils.data.Subset(mnist, range(samples))


# ---- the owner's process -----------------------------------------------------------------------


def owner(network: str, samples: int, threads: int) -> None:
    """Publish the subset and a private tensor, approve what the benchmark asks for, and serve
    one scientist."""
    torch.set_num_threads(threads)
    with start_duet(network, confirm=False) as duet:
        _subset(samples).send(duet, pointable=True, tags=["mnist-train"], description="subset")
        torch.randn(4).send(duet, pointable=True, tags=["approved"], description="for gets")
        duet.requests.add_handler(name="train_size", action="accept")
        duet.requests.add_handler(name="model", action="accept")
        duet.requests.add_handler(tags=["approved"], action="accept")
        print("owner ready", flush=True)
        duet.wait(3600)


# ---- the scientist's measurements -------------------------------------------------------------


def _median_us(fn: Callable[[], object], n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def round_trips(duet: sy.duet.ScientistDuet, n: int = 300) -> dict[str, float]:
    x = torch.ones(4).send(duet)
    approved = duet.store["approved"]
    big = torch.randn(9216, 96)
    remote_big = big.send(duet)
    duet.flush()
    return {
        "op": _median_us(lambda: (x + 1).get(), n),
        "approved get": _median_us(lambda: (approved + 0).get(request_block=True), n),
        "send 9216x96": _median_us(lambda: (big.send(duet), duet.flush()), 20),
        "get 9216x96": _median_us(lambda: remote_big.get(delete=False), 20),
    }


def accept_latency_us(network: str, n: int = 50) -> float:
    """Median time from the owner's `request.accept()` to the value in the scientist's hands
    (both in this process: the owner's side in this thread, the scientist's in another)."""
    with start_duet(network, confirm=False) as owner_duet:
        torch.randn(4).send(owner_duet, pointable=True, tags=["private"], description="data")
        duet = sy.join_duet(owner_duet.session_id, network, timeout=60)
        private = duet.store["private"]
        times = []
        for _ in range(n + 1):
            got = threading.Event()
            pointer = private + 0
            waiter = threading.Thread(
                target=lambda p=pointer, done=got: (
                    p.get(request_block=True, name="by hand", timeout_secs=60),
                    done.set(),
                )
            )
            waiter.start()
            while not len(owner_duet.requests):
                time.sleep(0.0005)
            start = time.perf_counter()
            owner_duet.requests[0].accept()
            got.wait()
            times.append(time.perf_counter() - start)
            waiter.join()
        duet.close()
    return statistics.median(times[1:]) * 1e6


def duet_epoch(duet: sy.duet.ScientistDuet, model: SyNet, seed: int) -> tuple[float, SyNet]:
    """The tutorial's train(): seconds for one epoch, and the trained model (fetched after)."""
    remote_torch = duet.torch
    data = duet.store["mnist-train"]
    data.len().get(request_block=True, name="train_size")
    remote_model = model.send(duet)
    remote_torch.manual_seed(seed)
    optimizer = remote_torch.optim.Adadelta(remote_model.parameters(), lr=1.0)
    loader = remote_torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)
    duet.flush()
    start = time.perf_counter()
    remote_model.train()
    for data_ptr, target_ptr in loader:
        optimizer.zero_grad()
        loss = remote_torch.nn.functional.nll_loss(remote_model(data_ptr), target_ptr)
        loss.backward()
        optimizer.step()
    duet.flush()
    spent = time.perf_counter() - start
    return spent, remote_model.get(request_block=True, name="model")


def plain_epoch(dataset: torch.utils.data.Dataset, model: SyNet, seed: int) -> tuple[float, SyNet]:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    start = time.perf_counter()
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        F.nll_loss(model(data), target).backward()
        optimizer.step()
    return time.perf_counter() - start, model


# ---- running it ---------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _line(proc: subprocess.Popen, pattern: str) -> str:
    for line in proc.stdout:  # type: ignore[union-attr]
        found = re.search(pattern, line)
        if found:
            return found.group(1)
    raise RuntimeError(f"the process ended before printing {pattern!r}")


def _join(network: str, samples: int, relay: bool, threads: int) -> tuple[subprocess.Popen, object]:
    proc = _spawn(
        __file__, "--owner", network, "--samples", str(samples), "--threads", str(threads)
    )
    session_id = _line(proc, r"session id: (\w+)")
    _line(proc, r"(owner ready)")
    return proc, sy.join_duet(session_id, network, relay=relay, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=16, help="batches of 64 in the epoch")
    parser.add_argument("--repeats", type=int, default=3, help="best of N epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    parser.add_argument("--owner", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.owner:
        owner(args.owner, args.samples, args.threads)
        return
    torch.set_num_threads(args.threads)
    samples = args.batches * BATCH
    service = _spawn("-m", "tether.duet.network", "--port", "0", "--quiet")
    processes = [service]
    try:
        network = _line(service, r"listening on (ws://\S+)")
        duets = {}
        for relay in (False, True):
            proc, duets[relay] = _join(network, samples, relay, args.threads)
            processes.append(proc)
        results = {relay: round_trips(duet) for relay, duet in duets.items()}
        duets[True].close()
        direct = duets[False]
        print("round trips through a duet (median; owner and service in their own processes):")
        for what in results[False]:
            d, r = results[False][what], results[True][what]
            print(
                f"  {what:14s} direct {d / 1e3:8.3f} ms   relayed {r / 1e3:8.3f} ms   "
                f"relay/direct {r / d:5.2f}x"
            )
        print(
            f"  accepted by hand: the blocked get returns {accept_latency_us(network) / 1e3:.3f}"
            " ms after request.accept() (PySyft polled approvals once a second)"
        )
        mib = 9216 * 96 * 4 / 2**20
        send, get = (mib / (results[False][f"{way} 9216x96"] / 1e6) for way in ("send", "get"))
        print(
            f"  9216x96 float32 ({mib:.1f} MiB) direct: send {send:.0f} MiB/s, get {get:.0f} "
            "MiB/s (PySyft's Duet: 45 s to copy it)"
        )

        torch.manual_seed(0)
        model = SyNet(torch)
        dataset = _subset(samples)
        plain_epoch(dataset, copy.deepcopy(model), seed=0)  # warm up both sides: the first
        duet_epoch(direct, copy.deepcopy(model), seed=0)  # epoch builds kernels and pools
        plain, duet_runs, same = [], [], True
        for repeat in range(args.repeats):
            seconds, local = plain_epoch(dataset, copy.deepcopy(model), seed=repeat)
            plain.append(seconds)
            seconds, remote = duet_epoch(direct, copy.deepcopy(model), seed=repeat)
            duet_runs.append(seconds)
            same &= all(
                torch.equal(a, b)
                for a, b in zip(
                    local.state_dict().values(), remote.state_dict().values(), strict=True
                )
            )
        direct.close()
        print(
            f"SyNet, 1 epoch of {samples} MNIST images, batch {BATCH}, best of {args.repeats}, "
            f"{args.threads} thread(s) each side:"
        )
        print(f"  plain PyTorch          {min(plain):7.2f} s")
        print(
            f"  through the duet       {min(duet_runs):7.2f} s   ratio "
            f"{min(duet_runs) / min(plain):.2f}x   trained weights identical: {same}"
        )
    finally:
        for proc in reversed(processes):  # the service last: owners leave it first
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
