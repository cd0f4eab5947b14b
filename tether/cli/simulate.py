"""`tether simulate`: a federation of many virtual clients in this process, on the MNIST sample."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tether.cli.console import add_flag, aliases_note
from tether.cli.train import add_strategy_flags, strategy_flags
from tether.federated import report
from tether.federated.data.partition import parse_spec, with_count
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import MODELS
from tether.federated.simulation import Backend, SequentialBackend, Simulation, SimulationResult
from tether.federated.strategies import make_strategy

SUMMARY = "simulate a federation of many clients in one process"
DESCRIPTION = f"""\
Simulate federated training with --clients virtual clients on the MNIST sample embedded in
tether, in this process: each round the strategy picks a --fraction of the clients, each trains
the global model on its samples (the same training `tether train`'s workers run, with the same
seeds) and the strategy aggregates their weights. After every --eval-every rounds the global
model is scored on the sample's 10,000 test images.

Each client holds --samples-per-client images (default 50), drawn from the 5,000 in the sample
without replacement while they suffice and with replacement beyond (more than 100 clients of
50); 0 splits the whole sample once. --partition says how the images are dealt to the clients:
  iid                    the same mix of digits for everyone
  dirichlet:ALPHA        label skew of strength ALPHA (0.1: strong, 100: almost IID)
  shards:K               K label-sorted shards each (McMahan et al.)
  labels-per-client:K    K digits each, NIID-Bench's #C=K
  labels:0-3/4-6/7-9     one group of digits per client (as many clients as groups)
(each may also name the client count: dirichlet:100:0.5).

  tether simulate --clients 1000 --rounds 20 --partition dirichlet:0.5 --out sim-out

--out DIR gets metrics.csv and metrics.json (one row per round) and accuracy.png.

--backend ray trains the clients as Ray actors (pip install "tether[ray]"): on a Ray
instance started here on 127.0.0.1, or on the cluster at --ray-address (see docs/simulation.md).
{aliases_note("--batch-size")}"""

TEST_IMAGES = "the MNIST sample's 10,000 test images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(
        parser,
        "--clients",
        type=int,
        metavar="N",
        help="virtual clients (default: the count --partition names, else 10)",
    )
    add_flag(
        parser,
        "--partition",
        default="iid",
        metavar="SPEC",
        help="how the images are dealt (default iid; see above)",
    )
    add_flag(
        parser,
        "--samples-per-client",
        type=int,
        default=50,
        metavar="N",
        help="images each client holds (default 50; 0: split the whole sample once)",
    )
    add_flag(parser, "--rounds", type=int, default=10, metavar="N", help="rounds (default 10)")
    add_flag(parser, "--epochs", type=int, default=1, metavar="N", help="local epochs (default 1)")
    add_flag(
        parser,
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="local batch size (default 32)",
    )
    add_flag(
        parser, "--lr", type=float, default=0.1, metavar="X", help="learning rate (default 0.1)"
    )
    add_flag(
        parser, "--momentum", type=float, default=0.0, metavar="X", help="SGD momentum (default 0)"
    )
    add_flag(
        parser,
        "--model",
        default="mlp",
        choices=sorted(MODELS),
        help="model to train (default mlp)",
    )
    add_flag(
        parser,
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the data, the model, the sampling and the batch orders (default 0)",
    )
    add_flag(
        parser,
        "--eval-every",
        type=int,
        default=1,
        metavar="N",
        help="score the global model after round 1, every N rounds and the last (default 1)",
    )
    add_flag(
        parser,
        "--backend",
        default="sequential",
        choices=("sequential", "ray"),
        help="where clients train: one after another here (default), or on Ray",
    )
    add_flag(
        parser,
        "--ray-address",
        metavar="ADDR",
        help="with --backend ray: a running cluster's address (default: start Ray here)",
    )
    add_strategy_flags(parser)
    add_flag(parser, "--out", type=Path, metavar="DIR", help="write metrics and the plot here")
    add_flag(parser, "--no-progress", dest="progress", action="store_false", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run `tether simulate`; 0 on success, 1 with a message on a bad argument."""
    try:
        simulation = build(args)
    except ValueError as exc:
        print(f"tether simulate: error: {exc}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    result = simulation.run()
    seconds = time.perf_counter() - start
    print(summary(result, len(simulation.clients), seconds))
    if args.out is not None:
        written = write_outputs(result, settings(args, len(simulation.clients)), args.out)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def build(args: argparse.Namespace) -> Simulation:
    """The simulation the flags describe; ValueError naming the flag that is wrong."""
    for flag in ("rounds", "epochs", "batch_size", "eval_every"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.clients is not None and args.clients < 1:
        raise ValueError(f"--clients must be >= 1, got {args.clients}")
    if args.samples_per_client < 0:
        raise ValueError(f"--samples-per-client must be >= 0, got {args.samples_per_client}")
    clients = args.clients if args.clients is not None else _clients_in(args.partition)
    partition = parse_spec(with_count(args.partition, clients), args.seed)  # checked first
    from tether.cli.demo import mnist_tensors

    data, targets = mnist_tensors(train=True)
    test = mnist_tensors(train=False)
    pool = sample_pool(len(targets), clients, args.samples_per_client, args.seed)
    parts = [pool[part] for part in partition(targets[pool])]
    if len(parts) != clients:
        raise ValueError(
            f"--partition {args.partition} gives {len(parts)} clients, --clients {clients}"
        )
    arguments: dict[str, Any] = {"lr": args.lr}
    if args.momentum:
        arguments["momentum"] = args.momentum
    config = TrainConfig.parse(
        {
            "optimizer_args": arguments,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "seed": args.seed,
        }
    )
    name = args.strategy or "fedavg"
    try:
        strategy = make_strategy(name, strategy_flags(args, name))
    except ValueError as exc:
        raise ValueError(f"--strategy {name}: {exc}") from None
    torch.manual_seed(args.seed)
    return Simulation(
        MODELS[args.model](),
        (data, targets),
        partition=parts,
        strategy=strategy,
        config=config,
        rounds=args.rounds,
        test=test,
        eval_every=args.eval_every,
        backend=_backend(args.backend, args.ray_address),
        progress=args.progress,
    )


def _backend(name: str, ray_address: str | None) -> Backend:
    if name == "sequential":
        if ray_address is not None:
            raise ValueError("--ray-address needs --backend ray")
        return SequentialBackend()
    try:
        from tether.federated.simulation.ray_backend import RayBackend
    except ImportError as exc:
        raise ValueError(f"--backend ray: {exc}") from None
    return RayBackend(ray_address)


def _clients_in(spec: str) -> int:
    """The client count a spec names ('iid:20' -> 20; 'labels:a/b/c' -> 3); 10 otherwise."""
    kind, _, rest = spec.strip().partition(":")
    if kind == "labels":
        return len(rest.split("/"))
    first = rest.split(":")[0] if rest else ""
    return int(first) if first.isdigit() and with_count(spec, 0) == spec else 10


def sample_pool(n_samples: int, clients: int, per_client: int, seed: int) -> torch.Tensor:
    """The indices of the images the clients share out: `clients * per_client` of them,
    distinct while the sample holds enough, drawn with replacement beyond; all, once, when
    `per_client` is 0."""
    if per_client == 0:
        return torch.arange(n_samples)
    generator = torch.Generator().manual_seed(seed)
    wanted = clients * per_client
    if wanted <= n_samples:
        return torch.randperm(n_samples, generator=generator)[:wanted]
    return torch.randint(n_samples, (wanted,), generator=generator)


def settings(args: argparse.Namespace, clients: int) -> dict[str, Any]:
    """The run's settings as plain data (for metrics.json)."""
    out = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "out")}
    return {**out, "clients": clients, "test": TEST_IMAGES}


def summary(result: SimulationResult, clients: int, seconds: float) -> str:
    last = next((r for r in reversed(result.history) if "accuracy" in r), None)
    accuracy = f", test accuracy {100 * last['accuracy']:.2f}%" if last else ""
    final = result.history[-1]
    private = (
        f", DP-FedAvg ε = {final['epsilon']:.4g} (δ = {final['delta']:g})"
        if "epsilon" in final
        else ""
    )
    return (
        f"{len(result.history)} rounds of {clients} clients in {seconds:.1f} s "
        f"({seconds / len(result.history):.2f} s per round){accuracy}{private}"
    )


def write_outputs(result: SimulationResult, run: dict[str, Any], out: Path) -> list[Path]:
    """metrics.json (settings and rounds), metrics.csv (one row per round), accuracy.png."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "metrics.json", out / "metrics.csv"
    text = json.dumps({"settings": run, "rounds": result.history}, indent=1).encode()
    report.write_atomic(json_path, lambda f: f.write(text))
    table = pd.DataFrame(result.history)
    report.write_atomic(csv_path, lambda f: table.to_csv(f, index=False))
    scored = [
        {"round": r["round"], "eval": {report.FEDERATED: {"accuracy": r["accuracy"]}}}
        for r in result.history
        if "accuracy" in r
    ]
    plot = report.plot_accuracy(
        scored, out / "accuracy.png", title=f"Simulated federation of {run['clients']} clients"
    )
    return [json_path, csv_path, plot]
