"""Aggregation strategies side by side, with hostile clients: 10 clients on an IID split of the
MNIST sample shipped with tether (500 images each, the 784-200-10 MLP), `--attackers` of them
sending `global - 10 * (their update)`. Prints each strategy's test accuracy after every few
rounds, beside clean FedAvg.

The clients train in this process, one after another, with the same `train` a worker's `fit`
runs (one model reused for every client, as a simulation does); the strategies are the ones
`tether train --strategy NAME` uses.

Run: python examples/strategies_mnist.py [--rounds 30] [--attackers 2] [--lr 0.3]
     [--lr-decay 0.95] [--batch-size 100] [--strategies fedavg median trimmed_mean krum multikrum]

The defaults are the robustness test's (tests/test_strategies.py), which averages the
accuracy of the last three rounds.
"""

from __future__ import annotations

import argparse
import time

import torch

from tether.cli.demo import mnist_tensors
from tether.federated.data.partition import iid
from tether.federated.delegated.training import TrainConfig, train
from tether.federated.models import mlp
from tether.federated.strategies import STRATEGIES, Strategy, Update, make_strategy

CLIENTS = 10
PARAMETERS = {
    "trimmed_mean": {"beta": 0.2},
    "krum": {"byzantine": 2},
    "multikrum": {"byzantine": 2},
}


def run(
    strategy: Strategy, attackers: int, rounds: int, lr: float, batch_size: int, seed: int = 0
) -> list[float]:
    """Test accuracy after each round; clients 0 .. attackers-1 send -10x their update."""
    data, targets = mnist_tensors(train=True)
    test, labels = mnist_tensors(train=False)
    parts = iid(len(data), CLIENTS, seed=seed)
    torch.manual_seed(seed)
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    config = TrainConfig(optimizer_args={"lr": lr}, batch_size=batch_size)
    accuracies = []
    for r in range(1, rounds + 1):
        updates = []
        for i in range(CLIENTS):
            name = f"client{i}"
            task = strategy.configure(
                r, name, TrainConfig(**{**config.to_dict(), "seed": r * 100 + i})
            )
            model.load_state_dict(state)
            result = train(
                model,
                data[parts[i]],
                targets[parts[i]],
                task.config,
                optimizer=optimizer,
                correction=task.correction,
            )
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if i < attackers:
                weights = {k: state[k] - 10 * (w - state[k]) for k, w in weights.items()}
            updates.append(Update(name, weights, result["samples"], result["batches"]))
        state = strategy.aggregate(r, updates, state)
        model.load_state_dict(state)
        with torch.no_grad():
            accuracies.append(float((model.eval()(test).argmax(1) == labels).float().mean()))
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--attackers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr-decay", type=float, default=0.95)
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=list(STRATEGIES),
        default=["fedavg", "median", "trimmed_mean", "krum", "multikrum"],
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # many small steps: a second thread only spins
    shown = sorted({*range(0, args.rounds, 5), args.rounds - 1})
    print(f"{'strategy':<28}" + "".join(f"{'r' + str(r + 1):>7}" for r in shown) + "   seconds")
    runs = [("fedavg", 0)] + [(name, args.attackers) for name in args.strategies]
    for name, attackers in runs:
        strategy = make_strategy(name, {**PARAMETERS.get(name, {}), "lr_decay": args.lr_decay})
        start = time.perf_counter()
        accuracies = run(strategy, attackers, args.rounds, args.lr, args.batch_size)
        label = f"{name} ({'clean' if attackers == 0 else f'{attackers} attackers'})"
        cells = "".join(f"{100 * accuracies[r]:7.1f}" for r in shown)
        print(f"{label:<28}{cells}   {time.perf_counter() - start:7.1f}", flush=True)


if __name__ == "__main__":
    main()
