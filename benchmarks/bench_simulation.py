"""Simulating many clients: tether's engine against the plain-PyTorch floor, in one run.

The job (issue 24's Scale acceptance): a FedAvg round over N clients of 50 MNIST samples each
(drawn from the embedded sample; beyond the 100 clients it holds, clients draw with
replacement), the MLP 784-200-10, one local epoch of batch 32, SGD lr 0.1. The floor, "plain
PyTorch", is the same clients' training done one after another in one process with only torch
imported: one model object, each client's start state loaded, one local epoch with the same
batch orders, a running samples-weighted sum for FedAvg. tether runs it with `Simulation` (the
sequential backend). Both sides train with --threads torch threads (default 1: see
SequentialBackend). Each configuration runs in its own process, plain and tether alternating,
so that each process's peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`: all memory the
process ever held, torch included) is its own. Printed per client count (medians over repeats):

    seconds per round (median of rounds 2..R) and tether / plain, in wall time and in CPU time
    (steadier where other work shares the cores)                        target <= 1.5x
    peak RSS                                                           target < 1 GB at 1,000
    time to first round: from launching the process (so Python's start, importing torch and
    tether, reading the data and setting up count) to the end of round 1     target < 3 s
    max |weight difference| between the two sides' final global models (same work: ~1e-7)

Flower's simulation on the same job is the other column of the issue's table: with
--flwr-python (an interpreter of an environment with flwr[simulation], see
flower_simulation.py), each client count also runs once in Flower's legacy simulation engine
(`start_simulation`, the faster of its two here), after tether's and plain's runs: its seconds
per round, time to first round and the peak RSS of its whole process tree (Ray included).

Run: python benchmarks/bench_simulation.py [--clients 10,100,1000] [--rounds 3] [--repeat 2]
     python benchmarks/bench_simulation.py --quick          (10 and 100 clients, 2 rounds, once)
     python benchmarks/bench_simulation.py --clients 10000 --rounds 2 --repeat 1
     python benchmarks/bench_simulation.py --flwr-python /tmp/flwr-venv/bin/python
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "tether" / "datasets" / "mnist_sample"
PER_CLIENT, BATCH, LR, SEED = 50, 32, 0.1, 0
MEAN, STD = 0.1307, 0.3081


# ---- the job, shared by both sides (torch and numpy only) ---------------------------------------


def mnist() -> tuple:
    """The embedded training sample, normalized as `tether worker` serves it."""
    import numpy as np
    import torch

    images = gzip.decompress((SAMPLE / "train-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((SAMPLE / "train-labels-idx1-ubyte.gz").read_bytes())
    x = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(labels, np.uint8, offset=8)
    data = (torch.from_numpy(x.astype(np.float32)) / 255 - MEAN) / STD
    return data.contiguous(), torch.from_numpy(y.astype(np.int64))


def client_indices(clients: int, n_samples: int) -> list:
    """Each client's 50 sample indices: distinct samples while the sample holds enough, then
    drawn with replacement (as issue 24's measurement did)."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    wanted = clients * PER_CLIENT
    if wanted <= n_samples:
        pool = torch.randperm(n_samples, generator=generator)[:wanted]
    else:
        pool = torch.randint(n_samples, (wanted,), generator=generator)
    return list(pool.view(clients, PER_CLIENT))


def mlp():
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10), nn.LogSoftmax(dim=1)
    )


# ---- the two sides, each in its own process -----------------------------------------------------


def plain(clients: int, rounds: int, out: Path, threads: int) -> dict:
    """The floor: the rounds in plain PyTorch, with tether's batch orders (seed per round and
    client: `seed * 1_000_003 + round * 1009 + client`, the coordinator's rule)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    data, targets = mnist()
    parts = client_indices(clients, len(data))
    torch.manual_seed(SEED)
    model = mlp()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seconds, cpu, first = [], [], 0.0
    for r in range(1, rounds + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        total = {k: torch.zeros_like(v) for k, v in state.items()}
        for i, part in enumerate(parts):
            model.load_state_dict(state)
            optimizer.state.clear()
            x, y = data.index_select(0, part), targets.index_select(0, part)
            order = torch.randperm(
                len(x), generator=torch.Generator().manual_seed(SEED * 1_000_003 + r * 1009 + i)
            )
            for begin in range(0, len(x), BATCH):
                index = order[begin : begin + BATCH]
                optimizer.zero_grad(set_to_none=True)
                loss = F.nll_loss(model(x.index_select(0, index)), y.index_select(0, index))
                loss.backward()
                optimizer.step()
                loss.item()
            for key, value in model.state_dict().items():
                total[key].add_(value, alpha=len(part))
        state = {k: v / sum(len(p) for p in parts) for k, v in total.items()}
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if r == 1:
            first = time.time()
    save_file(state, str(out))
    return {"seconds": seconds, "cpu": cpu, "first_round_at": first}


def tether(clients: int, rounds: int, out: Path, threads: int) -> dict:
    """The same rounds through `Simulation`; tether's import counts in the time to round 1."""
    import torch
    from safetensors.torch import save_file

    from tether.federated.delegated.training import TrainConfig
    from tether.federated.simulation import SequentialBackend, Simulation

    data, targets = mnist()
    parts = client_indices(clients, len(data))
    torch.manual_seed(SEED)
    config = TrainConfig(batch_size=BATCH, optimizer_args={"lr": LR}, seed=SEED)
    cpu, ends = [time.process_time()], []

    def clock(record: dict) -> None:
        cpu.append(time.process_time())
        ends.append(time.time())

    simulation = Simulation(
        mlp(),
        (data, targets),
        partition=parts,
        config=config,
        rounds=rounds,
        backend=SequentialBackend(threads=threads),
        on_round=clock,
    )
    result = simulation.run()
    save_file(result.state, str(out))
    return {
        "seconds": [h["seconds"] for h in result.history],
        "cpu": [b - a for a, b in itertools.pairwise(cpu)],
        "first_round_at": ends[0],
    }


# Each child mode: (clients, rounds, where to save the final weights, torch threads) -> seconds
# per round (wall and CPU) and when round 1 ended. Flower's simulation of the same job is added
# here as "flower" (run by the interpreter of Flower's own environment, --flwr-python),
# reporting the same fields.
CHILDREN: dict[str, Callable[[int, int, Path, int], dict]] = {"plain": plain, "tether": tether}


def child(mode: str, clients: int, rounds: int, out: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    result = CHILDREN[mode](clients, rounds, out, threads)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# ---- the parent: launch, alternate, compare -----------------------------------------------------


def launch(mode: str, clients: int, rounds: int, out: Path, threads: int) -> dict:
    started = time.time()
    env = dict(os.environ, PYTHONPATH=str(SAMPLE.parents[2]))
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--clients",
            str(clients),
            "--rounds",
            str(rounds),
            "--threads",
            str(threads),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{mode} with {clients} clients failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["ttfr"] = result["first_round_at"] - started  # the child's clock, from its launch
    return result


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of each side (default 1)"
    )
    parser.add_argument("--quick", action="store_true", help="10 and 100 clients, 2 rounds, once")
    parser.add_argument("--flwr-python", help="also run Flower's simulation with this python")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, int(args.clients), args.rounds, args.out, args.threads)
        return
    if args.quick:
        args.clients, args.rounds, args.repeat = "10,100", 2, 1
    counts = [int(c) for c in args.clients.split(",")]
    if args.rounds < 2:
        raise SystemExit("--rounds must be >= 2 (round 1 warms up; rounds 2.. are timed)")
    scratch = Path(tempfile.mkdtemp(prefix="bench-simulation-"))
    print(
        f"FedAvg, N clients x {PER_CLIENT} MNIST samples, MLP 784-200-10, 1 epoch of batch "
        f"{BATCH}, SGD; {args.rounds} rounds, {args.repeat} repeat(s), {args.threads} torch "
        f"thread(s) per side, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'clients':>8} {'plain s/round':>14} {'tether s/round':>15} {'wall ratio':>11} "
        f"{'CPU ratio':>10} {'plain RSS':>10} {'tether RSS':>11} {'1st round plain':>16} "
        f"{'tether':>7} {'max |dw|':>9}"
    )
    for n in counts:
        runs: dict[str, list[dict]] = {"plain": [], "tether": []}
        for rep in range(args.repeat):
            order = ["plain", "tether"] if rep % 2 == 0 else ["tether", "plain"]
            for mode in order:
                out = scratch / f"{mode}.safetensors"
                runs[mode].append(launch(mode, n, args.rounds, out, args.threads))

        def median(mode: str, key: str, runs: dict[str, list[dict]] = runs) -> float:
            """The median over repeats of the median over rounds 2.. (or of a number)."""
            values = [r[key] for r in runs[mode]]
            return statistics.median(
                statistics.median(v[1:]) if isinstance(v, list) else v for v in values
            )

        def ratio(key: str, runs: dict[str, list[dict]] = runs) -> float:
            """The median over repeats of tether / plain, each run against its neighbour."""
            return statistics.median(
                statistics.median(t[key][1:]) / statistics.median(p[key][1:])
                for t, p in zip(runs["tether"], runs["plain"], strict=True)
            )

        diff = max_difference(scratch / "plain.safetensors", scratch / "tether.safetensors")
        print(
            f"{n:>8,} {median('plain', 'seconds'):>14.3f} {median('tether', 'seconds'):>15.3f} "
            f"{ratio('seconds'):>10.2f}x {ratio('cpu'):>9.2f}x "
            f"{median('plain', 'peak_rss_mb'):>7.0f} MB {median('tether', 'peak_rss_mb'):>8.0f} MB "
            f"{median('plain', 'ttfr'):>14.2f} s {median('tether', 'ttfr'):>5.2f} s {diff:>9.1e}",
            flush=True,
        )
        if args.flwr_python:
            from flower_simulation import measure  # beside this script

            flower = measure(args.flwr_python, n, args.rounds, "legacy")
            print(
                f"{'':>8} Flower {flower['seconds_per_round']:.3f} s/round "
                f"({flower['seconds_per_round'] / median('tether', 'seconds'):.1f}x tether's), "
                f"peak RSS {flower['peak_rss_bytes'] / 2**20:.0f} MB, first round after "
                f"{flower['first_round_seconds']:.1f} s, accuracy {flower['accuracy']:.2%}",
                flush=True,
            )
    print(
        "targets: ratio <= 1.5x (wall; CPU time is steadier on a shared machine), "
        "tether RSS < 1 GB at 1,000 clients, first round < 3 s"
    )


if __name__ == "__main__":
    main()
