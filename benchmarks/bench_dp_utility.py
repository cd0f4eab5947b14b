"""What the worker owner's DP-SGD costs in accuracy on the websocket tutorial's job (issue 25,
"Utility"): test accuracy after 40 rounds at ε ∈ {1, 3, 8} (δ = 1e-5) beside no DP.

The job is the tutorial's, as `tether train` runs it with its defaults: the tutorial's CNN,
alice, bob and charlie holding digits 0-3, 4-6 and 7-9 of the 5,000-image MNIST sample embedded
in tether (not full MNIST), 40 rounds of 10 batches of 32 per worker, SGD at lr 0.1, FedAvg;
the federated model is scored on the sample's 10,000 test images after the last round.

The workers are in-process VirtualWorkers whose owner set DP with `enforce_dp(node,
OwnerDP(...))`: the node hands the owner's rules to every `fit`, exactly as `tether worker
--dp-noise Z --dp-clip 1 --max-epsilon E --delta 1e-5` does, so training runs the same
DP-SGD (Poisson batches of expected size 32, per-sample clipping to C = 1, Gaussian noise) and
the same ledger charges it. Only the transport differs (no websocket). For each target ε the
noise multiplier is the smallest (to 0.1%) for which the accountant (Opacus's RDP) gives every
worker ε <= target after its 40 x 10 steps at rate 32 / its sample count; the table shows the
ε the workers' ledgers reported after the last round. DP noise comes from the OS's entropy, so
a DP run does not repeat exactly; --seeds runs each setting with several model seeds.

Run: nice -n 19 python benchmarks/bench_dp_utility.py [--rounds 40] [--seeds 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import tether as sy
from tether.cli.demo import TUTORIAL_WORKERS, mnist_tensors
from tether.federated.coordinator import Coordinator
from tether.federated.data.partition import parse_label_groups
from tether.federated.delegated import enforce_dp
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import Net
from tether.federated.report import FEDERATED
from tether.privacy.dp import OwnerDP, Steps, epsilon

TARGETS = (1.0, 3.0, 8.0)
DELTA, CLIP, BATCH, BATCHES, LR = 1e-5, 1.0, 32, 10, 0.1


def parts() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The sample split by the tutorial's digit groups."""
    data, targets = mnist_tensors(train=True)
    out = {}
    for name, digits in TUTORIAL_WORKERS.items():
        group = torch.tensor(parse_label_groups(digits)[0])
        keep = torch.isin(targets, group).nonzero().flatten()
        out[name] = (data[keep].contiguous(), targets[keep].contiguous())
    return out


def worst_epsilon(noise: float, sizes: list[int], rounds: int) -> float:
    """The largest ε over the workers after `rounds` rounds at this noise multiplier."""
    return max(epsilon([Steps(noise, BATCH / n, rounds * BATCHES)], DELTA) for n in sizes)


def noise_for(target: float, sizes: list[int], rounds: int) -> float:
    """The smallest noise multiplier (to 0.1%) that keeps every worker within `target`."""
    low, high = 0.3, 50.0
    while high / low > 1.001:
        middle = (low * high) ** 0.5
        low, high = (
            (middle, high) if worst_epsilon(middle, sizes, rounds) > target else (low, middle)
        )
    return high


def run(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    test: tuple[torch.Tensor, torch.Tensor],
    rounds: int,
    seed: int,
    rules: OwnerDP | None,
) -> tuple[float, float | None]:
    """One federated run; the federated model's test accuracy and the largest ε a worker's
    ledger reported after the last round (None without DP)."""
    workers = {}
    for name, part in data.items():
        worker = sy.VirtualWorker(id=f"{name}-{seed}-{id(rules)}")
        worker.publish("mnist", part)
        if rules is not None:
            enforce_dp(worker.node, rules)
        workers[name] = worker
    evaluator = sy.VirtualWorker(id=f"testing-{seed}-{id(rules)}")
    evaluator.publish("mnist_testing", test)
    torch.manual_seed(seed)
    config = TrainConfig(
        batch_size=BATCH, max_batches=BATCHES, optimizer_args={"lr": LR}, seed=seed
    )
    result = Coordinator(
        Net(),
        workers,
        evaluator=evaluator,
        config=config,
        rounds=rounds,
        eval_every=rounds,
        log=lambda line: None,
    ).run()
    last = result.history[-1]
    spent = [t["epsilon_total"] for t in last["train"].values() if "epsilon_total" in t]
    return last["eval"][FEDERATED]["accuracy"], max(spent) if spent else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="rounds (default 40)")
    parser.add_argument("--seeds", type=int, default=1, help="model seeds per setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = parts()
    test = mnist_tensors(train=False)
    sizes = [len(targets) for _, targets in data.values()]
    held = zip(TUTORIAL_WORKERS.items(), sizes, strict=True)
    print(
        f"The websocket tutorial's job on the 5,000-image MNIST sample (workers hold "
        f"{', '.join(f'{n} ({d}): {s}' for (n, d), s in held)} "
        f"images), CNN, {args.rounds} rounds x {BATCHES} batches of {BATCH}, SGD lr {LR}; "
        f"worker DP-SGD with C = {CLIP}, δ = {DELTA:g}; test: 10,000 images; "
        f"seeds 1..{args.seeds}"
    )
    print(f"command: nice -n 19 python {' '.join(sys.argv)}")
    print()
    print("| target ε | noise multiplier | ε spent (worst worker) | test accuracy | seconds |")
    print("| --- | --- | --- | --- | --- |")
    settings: list[tuple[str, OwnerDP | None, float | None]] = [("no DP", None, None)]
    for target in TARGETS:
        noise = noise_for(target, sizes, args.rounds)
        rules = OwnerDP(noise=noise, clip=CLIP, max_epsilon=target * 1.01, delta=DELTA)
        settings.append((f"{target:g}", rules, noise))
    for label, rules, noise in settings:
        start = time.perf_counter()
        accuracies, spent = [], []
        for seed in range(1, args.seeds + 1):
            if rules is not None:  # a fresh ledger per run: each run is a fresh dataset's budget
                rules = OwnerDP(
                    noise=rules.floor.noise,
                    clip=CLIP,
                    max_epsilon=rules.max_epsilon,
                    delta=DELTA,
                )
            accuracy, eps = run(data, test, args.rounds, seed, rules)
            accuracies.append(accuracy)
            if eps is not None:
                spent.append(eps)
        seconds = time.perf_counter() - start
        mean = 100 * statistics.mean(accuracies)
        spread = (
            f" (± {100 * statistics.stdev(accuracies):.2f}, {len(accuracies)} seeds)"
            if len(accuracies) > 1
            else ""
        )
        print(
            f"| {label} | {'—' if noise is None else f'{noise:.3f}'} | "
            f"{'—' if not spent else f'{max(spent):.3f}'} | {mean:.2f}%{spread} | "
            f"{seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
