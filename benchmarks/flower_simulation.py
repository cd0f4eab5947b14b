"""Flower's simulation engine on the scale benchmark's job: the Flower side of `bench_simulation`.

The job: FedAvg rounds, N clients x 50 MNIST samples (the embedded sample's 5,000 training
images: the first 100 clients get disjoint shards of a seeded permutation, each client beyond
them draws 50 images at random with its own seed), an MLP 784-200-10, 1 local epoch of batch 32
(shuffled per client and round), SGD lr 0.1, every client every round. Flower runs it on Ray,
one CPU per client actor, as many actors as cores, with --engine current (default: its
Simulation Engine, `flwr.simulation.run_simulation`, a `ServerApp` driving its own `FedAvg`
and a `ClientApp`) or --engine legacy (`start_simulation`, the Virtual Client Engine that
Flower deprecated in 1.13 and still ships: NumPyClients and the legacy FedAvg).

Measured from outside the Flower process (the caller's side of `measure`, which needs neither
Flower nor tether): seconds per round (the median gap between consecutive aggregations, so the
first round's warm-up is left out), time to first round (from starting the interpreter,
imports and Ray's start included, to the end of round 1's aggregation), and the peak memory of
the whole process tree (the driver, Ray's GCS and raylet, every client actor), sampled every
0.1 s as the sum of RSS (shared pages counted once per process, as `ps` would) and of PSS
(shared pages split between the processes that map them: the memory the tree really takes).

Flower is never installed in tether's environment: it runs in its own, e.g.
    python -m venv /tmp/flwr-venv
    /tmp/flwr-venv/bin/pip install torch==2.13.0 "flwr[simulation]"   # torch: the CPU wheel
Run: python benchmarks/flower_simulation.py [--clients 10,100,1000] [--rounds 3]
     [--engine current|legacy] [--flwr-python /tmp/flwr-venv/bin/python]
It prints one JSON object per client count. From another benchmark (tether's environment, no
Flower import): `measure(python, clients, rounds, engine)` returns the same dict.
(The same file, started by Flower's interpreter with --flower N, is the Flower side.)
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "tether" / "datasets" / "mnist_sample"
FLOWER_PYTHON = "/tmp/flwr-venv/bin/python"
MEAN, STD = 0.1307, 0.3081
PER_CLIENT, BATCH, LR, SEED = 50, 32, 0.1, 0
ENGINES = {"current": "run_simulation", "legacy": "start_simulation"}


# ---- the caller's side: start Flower's interpreter, watch its process tree ------------------


def measure(
    python: str, clients: int, rounds: int = 3, engine: str = "current", timeout: float = 1800
) -> dict:
    """One Flower simulation of `rounds` rounds with `clients` clients, in a fresh process
    started with `python` (an interpreter that has flwr[simulation] and torch), on Flower's
    `engine` ("current": run_simulation; "legacy": start_simulation): seconds per round, time
    to first round, peak RSS and PSS of the process tree, the final accuracy."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if rounds < 2:
        raise ValueError("seconds per round needs at least 2 rounds (round 1 warms up)")
    started = time.time()
    process = subprocess.Popen(
        [python, __file__, "--flower", str(clients), "--rounds", str(rounds), "--engine", engine],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = {"rss": 0, "pss": 0}
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.1):
            rss, pss = tree_memory(process.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        watching.set()
        watcher.join()
        if process.poll() is None:
            process.kill()
    if process.returncode != 0:
        raise RuntimeError(f"Flower with {clients} clients failed:\n{err[-3000:]}")
    found = json.loads(out.strip().splitlines()[-1])
    ends = found["round_ends"]
    gaps = [b - a for a, b in itertools.pairwise(ends)]  # rounds 2..
    return {
        "framework": f"flower {found['flwr']} ({ENGINES[engine]}, ray {found['ray']})",
        "clients": clients,
        "rounds": rounds,
        "seconds_per_round": sorted(gaps)[len(gaps) // 2],
        "round_seconds": gaps,
        "first_round_seconds": ends[0] - started,
        "peak_rss_bytes": peak["rss"],
        "peak_pss_bytes": peak["pss"],
        "accuracy": found["accuracy"],
    }


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in rollup:
            if line.startswith(("Rss:", "Pss:")):
                kib = int(line.split()[1]) * 1024
                if line.startswith("Rss:"):
                    rss += kib
                else:
                    pss += kib
    return rss, pss


# ---- Flower's side (runs in Flower's environment) --------------------------------------------


def mnist(train: bool):
    """The embedded sample as float32 (N, 784), normalized, and int64 labels."""
    import numpy as np
    import torch

    prefix = "train" if train else "t10k"
    images = gzip.decompress((SAMPLE / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((SAMPLE / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())
    x = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 784).astype(np.float32)
    y = np.frombuffer(labels, np.uint8, offset=8).astype(np.int64)
    return (torch.from_numpy(x) / 255 - MEAN) / STD, torch.from_numpy(y)


def client_indices(client: int, total: int):
    """The 50 training images of `client`: a disjoint shard while there are enough, then a
    random draw with the client's own seed."""
    import torch

    shards = total // PER_CLIENT
    if client < shards:
        order = torch.randperm(total, generator=torch.Generator().manual_seed(SEED))
        return order[client * PER_CLIENT : (client + 1) * PER_CLIENT]
    generator = torch.Generator().manual_seed(SEED * 1_000_003 + client)
    return torch.randperm(total, generator=generator)[:PER_CLIENT]


def mlp():
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10), nn.LogSoftmax(dim=1)
    )


def client_app():
    """Flower's ClientApp: each call loads the global weights, trains one epoch, replies."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()
    data, targets = mnist(train=True)  # read once, here; the app carries it to the actors

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = int(context.node_config["partition-id"])
        model = mlp()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        index = client_indices(client, len(data))
        x, y = data[index], targets[index]
        local_epoch(model, x, y, int(msg.content["config"]["server-round"]) * 1_000_003 + client)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(x)}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def local_epoch(model, x, y, seed: int) -> None:
    """One shuffled epoch of batch 32, SGD lr 0.1: a client's training, either engine."""
    import torch
    import torch.nn.functional as F

    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for start in range(0, len(x), BATCH):
        batch = order[start : start + BATCH]
        optimizer.zero_grad()
        F.nll_loss(model(x[batch]), y[batch]).backward()
        optimizer.step()


def run_flower(clients: int, rounds: int, engine: str) -> dict:
    """The job in Flower's simulation engine: when each round's aggregation ended (epoch
    seconds) and the final model's accuracy on the 10,000 test images."""
    import flwr
    import ray
    import torch

    run = run_legacy if engine == "legacy" else run_current
    round_ends, final = run(clients, rounds)
    model = mlp()
    model.load_state_dict(final)
    x, y = mnist(train=False)
    with torch.no_grad():
        accuracy = float((model.eval()(x).argmax(1) == y).float().mean())
    return {
        "round_ends": round_ends,
        "accuracy": accuracy,
        "flwr": flwr.__version__,
        "ray": ray.__version__,
    }


def run_current(clients: int, rounds: int) -> tuple[list[float], dict]:
    """Flower's Simulation Engine (`run_simulation`): a ServerApp with its FedAvg, a ClientApp."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    round_ends: list[float] = []
    final: dict = {}

    class TimedFedAvg(FedAvg):
        def aggregate_train(self, server_round, replies):
            merged = super().aggregate_train(server_round, replies)
            round_ends.append(time.time())
            return merged

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(SEED)
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(mlp().state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({}),
        )
        final.update(result.arrays.to_torch_state_dict())

    run_simulation(
        server_app=server,
        client_app=client_app(),
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count(), "include_dashboard": False},
        },
    )
    return round_ends, final


def run_legacy(clients: int, rounds: int) -> tuple[list[float], dict]:
    """Flower's legacy Virtual Client Engine (`start_simulation`, deprecated since 1.13 and
    still shipped): NumPyClients and the legacy FedAvg, as benchmarks/bench_flower.py runs it."""
    import flwr as fl
    import numpy as np
    import torch

    data, targets = mnist(train=True)
    keys = list(mlp().state_dict())

    class Client(fl.client.NumPyClient):
        def __init__(self, client: int) -> None:
            self.client = client

        def fit(self, parameters, config):
            model = mlp()
            weights = (torch.from_numpy(np.copy(p)) for p in parameters)
            model.load_state_dict(dict(zip(keys, weights, strict=True)))
            index = client_indices(self.client, len(data))
            x, y = data[index], targets[index]
            local_epoch(model, x, y, int(config["server-round"]) * 1_000_003 + self.client)
            return [v.numpy() for v in model.state_dict().values()], len(x), {}

    round_ends: list[float] = []
    final: list = []

    class TimedFedAvg(fl.server.strategy.FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            merged = super().aggregate_fit(server_round, results, failures)
            round_ends.append(time.time())
            final[:] = fl.common.parameters_to_ndarrays(merged[0])
            return merged

    torch.manual_seed(SEED)
    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_evaluate_clients=0,
        min_available_clients=clients,
        on_fit_config_fn=lambda r: {"server-round": r},
        initial_parameters=fl.common.ndarrays_to_parameters(
            [v.numpy() for v in mlp().state_dict().values()]
        ),
    )
    fl.simulation.start_simulation(
        client_fn=lambda context: Client(int(context.node_config["partition-id"])).to_client(),
        num_clients=clients,
        config=fl.server.ServerConfig(num_rounds=rounds),
        strategy=strategy,
        client_resources={"num_cpus": 1, "num_gpus": 0},
        ray_init_args={"num_cpus": os.cpu_count(), "include_dashboard": False},
    )
    state = {k: torch.from_numpy(np.copy(a)) for k, a in zip(keys, final, strict=True)}
    return round_ends, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,100,1000", help="client counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="current")
    parser.add_argument("--flwr-python", default=FLOWER_PYTHON)
    parser.add_argument("--flower", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower is not None:
        print(json.dumps(run_flower(args.flower, args.rounds, args.engine)))
        return
    if not Path(args.flwr_python).exists():
        sys.exit(f"Flower's interpreter {args.flwr_python} is not there: see this file's docstring")
    for clients in (int(n) for n in args.clients.split(",")):
        found = measure(args.flwr_python, clients, args.rounds, args.engine)
        print(json.dumps(found), flush=True)


if __name__ == "__main__":
    main()
