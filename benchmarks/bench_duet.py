"""Duet benchmarks, owner and network service in their own processes, every ratio against a
baseline doing the same work in the same setup, measured in the same run:

- one epoch of the tutorial's SyNet on an MNIST subset, trained through the duet (data on the
  owner, driven op by op from here) against plain PyTorch on the same data, seed and order. The
  plain epoch runs in its own process too, started as the owner's is (same interpreter, flags,
  environment, data loading code), on a pool thread as the owner's node computes, with the same
  number of torch threads (default 1 on each side: on a small shared machine, OpenMP threads
  that spin while another process holds a core make multi-threaded epochs swing tenfold). Both
  processes start with glibc's allocator told to keep the memory it has (ALLOCATOR): with its
  defaults it maps the epoch's larger tensors afresh and returns freed heap to the kernel, and
  the page faults of taking the memory back (measured: 35,000-170,000 per plain epoch, whether
  run in the scientist's process or in one started as the owner's) cost it up to a quarter,
  while the owner, allocating differently as it serves the duet's messages, faulted less
  (12,000-90,000 after the first epoch) and computed the same epoch faster than plain PyTorch
  did (0.88-0.92x);
- a blocking round trip (`(ptr + 1).get()`) through the relay against a direct connection, the
  same for a get the owner's handler approves, and copying a 9216x96 float32 tensor to the owner
  and back;
- how soon a scientist blocked in a get has the value once the owner accepts by hand.

Epochs and round trips interleave ours and the baseline; a ratio is the median of the rounds'
ratios. Run: python benchmarks/bench_duet.py [--batches 16] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

import tether as sy
from tether.datasets import MNIST
from tether.duet.session import start_duet
from tether.transforms import Compose, Normalize, ToTensor

BATCH = 64
# glibc malloc settings for every process this script starts (owner, plain epoch, service):
# serve blocks up to 32 MiB from the heap rather than mapping each, and return freed heap to the
# kernel only past 1 GiB, so that no epoch's compute pays for faulting back memory it just freed.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


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


# ---- the plain epoch's process ----------------------------------------------------------------


def plain_process(samples: int, threads: int) -> None:
    """Train plain PyTorch epochs on a pool thread, one for each seed read from stdin, printing
    each one's wall and CPU seconds and the trained weights' digest."""
    torch.set_num_threads(threads)
    dataset = _subset(samples)
    torch.manual_seed(0)
    model = SyNet(torch)  # the same initial weights as the scientist's
    with ThreadPoolExecutor(1) as pool:  # as the owner's node computes on a pool thread
        pool.submit(torch.set_num_threads, threads).result()
        print("plain ready", flush=True)
        for line in sys.stdin:
            job = pool.submit(plain_epoch, dataset, copy.deepcopy(model), int(line))
            wall, cpu, trained = job.result()
            print(f"epoch {wall!r} {cpu!r} {digest(trained)}", flush=True)


def digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's weights."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---- the scientist's measurements -------------------------------------------------------------


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(ours: Callable, baseline: Callable, n: int) -> tuple[float, float, float]:
    """Both once to warm up, then `n` rounds of each in turn: their medians (seconds) and the
    median of the rounds' ratios."""
    ours(), baseline()
    rounds = [(_seconds(ours), _seconds(baseline)) for _ in range(n)]
    return (
        statistics.median(o for o, _ in rounds),
        statistics.median(b for _, b in rounds),
        statistics.median(o / b for o, b in rounds),
    )


def round_trips(duet: sy.duet.ScientistDuet) -> dict[str, tuple[Callable, int]]:
    """What to time on a duet, and how many rounds."""
    x = torch.ones(4).send(duet)
    approved = duet.store["approved"]
    big = torch.randn(9216, 96)
    remote_big = big.send(duet)
    duet.flush()
    return {
        "op": (lambda: (x + 1).get(), 300),
        "approved get": (lambda: (approved + 0).get(request_block=True), 300),
        "send 9216x96": (lambda: (big.send(duet), duet.flush()), 20),
        "get 9216x96": (lambda: remote_big.get(delete=False), 20),
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


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time of this process, plus that of process `pid` (Linux: /proc/PID/stat)."""
    spent = time.process_time()
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        spent += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return spent


def duet_epoch(duet: sy.duet.ScientistDuet, model: SyNet, seed: int, owner_pid: int) -> tuple:
    """The tutorial's train(): wall and CPU seconds (scientist + owner) for one epoch, and the
    trained model (fetched after)."""
    remote_torch = duet.torch
    data = duet.store["mnist-train"]
    data.len().get(request_block=True, name="train_size")
    remote_model = model.send(duet)
    remote_torch.manual_seed(seed)
    optimizer = remote_torch.optim.Adadelta(remote_model.parameters(), lr=1.0)
    loader = remote_torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)
    duet.flush()
    start, cpu = time.perf_counter(), cpu_seconds(owner_pid)
    remote_model.train()
    for data_ptr, target_ptr in loader:
        optimizer.zero_grad()
        loss = remote_torch.nn.functional.nll_loss(remote_model(data_ptr), target_ptr)
        loss.backward()
        optimizer.step()
    duet.flush()
    spent = time.perf_counter() - start, cpu_seconds(owner_pid) - cpu
    return *spent, remote_model.get(request_block=True, name="model")


def plain_epoch(dataset: torch.utils.data.Dataset, model: SyNet, seed: int) -> tuple:
    """The same epoch in plain PyTorch: wall and CPU seconds, and the trained model."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        F.nll_loss(model(data), target).backward()
        optimizer.step()
    return time.perf_counter() - start, cpu_seconds() - cpu, model


# ---- running it ---------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        stdin=subprocess.PIPE,
        env={**os.environ, **ALLOCATOR, "PYTHONUNBUFFERED": "1"},
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
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    parser.add_argument("--owner", help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.owner:
        owner(args.owner, args.samples, args.threads)
        return
    if args.plain:
        plain_process(args.samples, args.threads)
        return
    torch.set_num_threads(args.threads)
    samples = args.batches * BATCH
    service = _spawn("-m", "tether.cli", "network", "--port", "0", "--quiet")
    processes = [service]
    try:
        network = _line(service, r"listening on (ws://\S+)")
        duets, owners = {}, {}
        for relay in (False, True):
            owners[relay], duets[relay] = _join(network, samples, relay, args.threads)
            processes.append(owners[relay])
        relayed, direct = (round_trips(duets[relay]) for relay in (True, False))
        print("round trips through a duet (median; owner and service in their own processes):")
        for what, (fn, n) in direct.items():
            r, d, ratio = _interleaved(relayed[what][0], fn, n)
            print(
                f"  {what:14s} direct {d * 1e3:8.3f} ms   relayed {r * 1e3:8.3f} ms   "
                f"relay/direct {ratio:5.2f}x"
            )
        duets[True].close()
        print(
            f"  accepted by hand: the blocked get returns {accept_latency_us(network) / 1e3:.3f}"
            " ms after request.accept()"
        )

        torch.manual_seed(0)
        model = SyNet(torch)
        baseline = _spawn(
            __file__, "--plain", "--samples", str(samples), "--threads", str(args.threads)
        )
        processes.append(baseline)
        _line(baseline, r"(plain ready)")
        rounds, same = [], True
        for seed in range(args.repeats + 1):  # round 0 warms up both sides
            *ours, remote = duet_epoch(duets[False], copy.deepcopy(model), seed, owners[False].pid)
            baseline.stdin.write(f"{seed}\n")  # type: ignore[union-attr]
            baseline.stdin.flush()  # type: ignore[union-attr]
            wall, cpu, local = _line(baseline, r"^epoch (\S+ \S+ \w+)$").split()
            same &= local == digest(remote)
            if seed:
                rounds.append((ours, (float(wall), float(cpu))))
        duets[False].close()
        print(
            f"SyNet, 1 epoch of {samples} MNIST images, batch {BATCH}, {args.repeats} "
            f"interleaved rounds, {args.threads} torch thread(s) on a pool thread each side "
            f"(trained weights identical: {same}):"
        )
        for i, what in enumerate(("wall", "CPU (duet: scientist + owner)")):
            ratios = sorted(o[i] / b[i] for o, b in rounds)
            plain, duet = (statistics.median(r[k][i] for r in rounds) for k in (1, 0))
            print(
                f"  {what:30s} plain {plain:6.2f} s   duet {duet:6.2f} s   ratio "
                f"{statistics.median(ratios):.2f}x, median of the rounds ({ratios[0]:.2f}-"
                f"{ratios[-1]:.2f}x)"
            )
    finally:
        for proc in reversed(processes):  # the service last: owners leave it first
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
