"""NIID-Bench's MNIST rows, reproduced on the embedded sample with tether's simulation engine.

Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An Experimental Study"
(arXiv 2102.02079), as reproduced in Flower's `baselines/niid_bench/README.md`: 10 clients,
all of them every round, 50 rounds, 10 local epochs, batch 64, SGD lr 0.01 with momentum 0.9,
FedProx mu 0.01, the paper's CNN (two 5x5 convolutions 1->6->16, then 120-84-10). Partitions:
IID, Dirichlet(0.5), and #C=k labels per client (k = 2, 1).

Differences from the paper, stated with the table: the training set is the 5,000-image sample
(500 per digit), not MNIST's 60,000 (the test set is the official 10,000); SCAFFOLD trains
with plain SGD (tether's SCAFFOLD uses option II's control variates, which read local steps as
SGD steps, and refuses momentum), the others with momentum 0.9 as the paper.

Every configuration runs in its own process (one torch thread); `--jobs` run at once.
Run: python benchmarks/bench_niid.py [--rounds 50] [--epochs 10] [--seeds 1] [--jobs 2]
     [--strategies fedavg,fedprox,scaffold,fednova] [--partitions iid,dir,c2,c1] [--out F]
A quick look: --rounds 2 --epochs 1.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Flower's niid_bench README (the paper's Table 3), MNIST: accuracy in percent.
PUBLISHED = {
    "fedavg": {"iid": 99.1, "dir": 98.9, "c2": 96.6, "c1": 10.0},
    "scaffold": {"iid": 99.2, "dir": 99.0, "c2": 96.6, "c1": 10.0},
    "fedprox": {"iid": 99.2, "dir": 99.0, "c2": 96.7, "c1": 81.3},
    "fednova": {"iid": 99.0, "dir": 98.8, "c2": 96.5, "c1": 55.1},
}
PARTITIONS = {
    "iid": "iid:10",
    "dir": "dirichlet:10:0.5",
    "c2": "labels-per-client:10:2",
    "c1": "labels-per-client:10:1",
}
TITLES = {"iid": "IID", "dir": "Dir(0.5)", "c2": "#C=2", "c1": "#C=1"}
STRATEGY_ARGS = {"fedprox": {"mu": 0.01}}


class PaperCNN(nn.Module):
    """NIID-Bench's CNN for MNIST: conv 1->6 (5x5), pool, conv 6->16 (5x5), pool, 256-120-84-10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc3(F.relu(self.fc2(x))), dim=1)


def run_one(strategy: str, partition: str, seed: int, rounds: int, epochs: int) -> dict:
    """One configuration, in its own process: final and best test accuracy, seconds."""
    from tether.cli.demo import mnist_tensors
    from tether.federated.delegated.training import TrainConfig
    from tether.federated.simulation import Simulation
    from tether.federated.strategies import make_strategy

    torch.set_num_threads(1)
    train, test = mnist_tensors(train=True), mnist_tensors(train=False)
    momentum = 0.0 if strategy == "scaffold" else 0.9
    config = TrainConfig(
        optimizer="SGD",
        optimizer_args={"lr": 0.01, "momentum": momentum},
        batch_size=64,
        epochs=epochs,
        seed=seed,
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    result = Simulation(
        PaperCNN(),
        train,
        partition=PARTITIONS[partition],
        strategy=make_strategy(strategy, STRATEGY_ARGS.get(strategy)),
        config=config,
        rounds=rounds,
        test=test,
        eval_every=max(1, rounds // 10),
    ).run()
    scored = [r["accuracy"] for r in result.history if "accuracy" in r]
    return {
        "strategy": strategy,
        "partition": partition,
        "seed": seed,
        "final": 100 * scored[-1],
        "best": 100 * max(scored),
        "seconds": time.perf_counter() - start,
    }


def table(results: list[dict], strategies: list[str], partitions: list[str]) -> str:
    """Ours (final-round accuracy, mean over seeds) beside the paper's, as Markdown."""
    lines = [
        "| partition | " + " | ".join(f"{s} (ours / paper)" for s in strategies) + " |",
        "| --- | " + " | ".join("---" for _ in strategies) + " |",
    ]
    for p in partitions:
        cells = []
        for s in strategies:
            ours = [r["final"] for r in results if r["strategy"] == s and r["partition"] == p]
            mean = sum(ours) / len(ours) if ours else float("nan")
            cells.append(f"{mean:.1f} / {PUBLISHED[s][p]:.1f}")
        lines.append(f"| {TITLES[p]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--strategies", default="fedavg,fedprox,scaffold,fednova")
    parser.add_argument("--partitions", default="iid,dir,c2,c1")
    parser.add_argument("--out", type=Path, default=None, help="write every result as JSON")
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    partitions = args.partitions.split(",")
    for s in strategies:
        if s not in PUBLISHED:
            parser.error(f"--strategies: {s!r} is not one of {sorted(PUBLISHED)}")
    for p in partitions:
        if p not in PARTITIONS:
            parser.error(f"--partitions: {p!r} is not one of {sorted(PARTITIONS)}")
    grid = [
        (s, p, seed) for seed in range(1, args.seeds + 1) for p in partitions for s in strategies
    ]
    results = []
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(run_one, s, p, seed, args.rounds, args.epochs) for s, p, seed in grid
        ]
        for future in futures:
            r = future.result()
            results.append(r)
            print(
                f"{r['strategy']:>9} {TITLES[r['partition']]:>9} seed {r['seed']}: "
                f"final {r['final']:.1f}%  best {r['best']:.1f}%  ({r['seconds']:.0f} s)",
                flush=True,
            )
    print(
        f"\n{args.rounds} rounds x {args.epochs} local epochs, 10 clients, "
        f"{args.seeds} seed(s), {time.perf_counter() - started:.0f} s in all\n"
    )
    print(table(results, strategies, partitions))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
