"""The 100-client simulation on a local Ray instance against the same run in process.

The job (issue 24's scale job): FedAvg rounds over N clients of 50 MNIST samples each (the
embedded sample, `iid:N`), the MLP 784-200-10, one local epoch of batch 32, SGD lr 0.1, the
same seeds on both sides. In process: `Simulation` with its sequential backend (one model,
one client after another) on one torch thread. On Ray: `RayBackend` on a Ray instance it
starts on 127.0.0.1 with K cores and K actors (one torch thread each), the dataset in the
object store and the global weights put once per round: with one actor it does the same
compute as in process, so the difference is Ray's overhead; with one actor per core it shows
what the cores buy. The runs alternate (--repeat), each in a fresh process so that none
inherits another's warm caches or Ray's processes.

Printed per backend: seconds per round (the median of rounds 2..R, as the engine times a
round: training and aggregation, not the final evaluation), the ratio to in process and the
difference (Ray's overhead per round, negative where its parallel actors win), the start
(Ray's and its actors' start-up; nothing in process), accuracy on the 10,000 test images and
the largest weight difference between the two final models (the same work: float rounding).

Run: python benchmarks/bench_ray.py [--clients 100] [--rounds 5] [--repeat 2]
(needs the ray extra: pip install -e ".[ray]")
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tether import datasets, transforms
from tether.datasets.base import materialize
from tether.federated.models import mlp
from tether.federated.simulation import Backend, SequentialBackend, Simulation

SEED = 0


def mnist(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    return materialize(datasets.MNIST(None, train=train, transform=t))


def run(backend_name: str, clients: int, rounds: int, out: Path) -> dict:
    """One simulation in this process; its timings and accuracy, its weights saved to `out`."""
    backend: Backend
    if backend_name.startswith("ray:"):
        from tether.federated.simulation.ray_backend import RayBackend

        cores = int(backend_name.removeprefix("ray:"))
        backend = RayBackend(num_cpus=cores, actors=cores)
    else:
        backend = SequentialBackend()  # one torch thread, as each actor
    started: list[float] = []
    start_backend = backend.start

    def timed_start(*args: object) -> None:
        began = time.perf_counter()
        start_backend(*args)  # type: ignore[arg-type]
        started.append(time.perf_counter() - began)

    backend.start = timed_start  # type: ignore[method-assign]
    torch.manual_seed(SEED)
    result = Simulation(
        mlp(),
        mnist(train=True),
        partition=f"iid:{clients}",
        config={"optimizer_args": {"lr": 0.1}, "batch_size": 32},
        rounds=rounds,
        test=mnist(train=False),
        eval_every=rounds,
        seed=SEED,
        backend=backend,
    ).run()
    save_file({k: v.contiguous() for k, v in result.state.items()}, out)
    rounds_s = [h["seconds"] for h in result.history]
    return {
        "per_round": statistics.median(rounds_s[1:]),
        "first_round": rounds_s[0],
        "start": started[0],
        "accuracy": result.history[-1]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 warms up)")
    if args.child:
        print(json.dumps(run(args.child, args.clients, args.rounds, Path(args.out))))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    print(
        f"{args.clients} clients x 50 samples, MLP 784-200-10, {args.rounds} rounds, "
        f"{os.cpu_count()} cores; {args.repeat} alternating run(s) each, each in its own "
        f"process; load average {os.getloadavg()[0]:.1f}"
    )
    names = ["in-process", "ray:1"] + ([f"ray:{os.cpu_count()}"] if os.cpu_count() != 1 else [])
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(args.repeat):
        for name in runs:
            out = folder / f"{name.replace(':', '-')}-{i}.safetensors"
            job = ["--clients", str(args.clients), "--rounds", str(args.rounds)]
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, "--out", str(out), *job],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            found["state"] = load_file(out)
            runs[name].append(found)
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    base = runs["in-process"]
    print(
        f"{'backend':12} {'s/round (each run)':>20} {'median':>7} {'x in-proc':>9} "
        f"{'overhead ms':>12} {'start s':>8} {'accuracy':>9} {'max |dw|':>9}"
    )
    for name, found in runs.items():
        ratio = statistics.median(
            r["per_round"] / b["per_round"] for r, b in zip(found, base, strict=True)
        )
        overhead = statistics.median(
            r["per_round"] - b["per_round"] for r, b in zip(found, base, strict=True)
        )
        diff = max(
            float((r["state"][k] - b["state"][k]).abs().max())
            for r, b in zip(found, base, strict=True)
            for k in b["state"]
        )
        each = " ".join(f"{r['per_round']:.3f}" for r in found)
        print(
            f"{name:12} {each:>20} "
            f"{statistics.median(r['per_round'] for r in found):7.3f} {ratio:9.2f} "
            f"{1000 * overhead:12.1f} {statistics.median(r['start'] for r in found):8.2f} "
            f"{100 * found[-1]['accuracy']:8.2f}% {diff:9.1e}"
        )
    print(
        "ray:K = K actors on K cores; s/round: median of rounds 2.. (training + aggregation); "
        "overhead: s/round minus in-process's, run by run; start: the backend's start (Ray, "
        "its actors, the dataset)"
    )


if __name__ == "__main__":
    main()
