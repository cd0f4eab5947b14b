"""The websocket tutorial's job with tether and with Flower, side by side, in one run.

The job: the tutorial's CNN, the embedded MNIST sample split 0-3 / 4-6 / 7-9 over three
workers, 40 rounds of 10 batches of 32 (SGD, lr 0.1) per worker, FedAvg by samples. Tether runs
it with three `tether worker` processes and the coordinator; Flower runs the same model, data,
partition and config (a) with three client processes and a server on gRPC (the deployment
shape that matches tether's), (b) in Flower's Ray simulation. Every worker process gets
cores / 3 torch threads. Same work, same setup: wall times count the 40 rounds, from the moment
every worker is up to the end of the last round's aggregation, for every job; neither counts
starting or tearing down servers, clients or Ray. The jobs run alternately (--repeat), and each
ratio is the median of the runs' ratios. Accuracy (on the official 10,000 test images) is
computed afterwards to show both learned.
The training is the same work in every job, so on a busy or small machine the wall times are
mostly the cores' share; the per-round overhead (round wall time minus the slowest worker's
training in it) is what each framework adds, and is printed too.

Flower is never installed in tether's environment: it runs in its own, e.g.
    python -m venv /tmp/flwr-venv
    /tmp/flwr-venv/bin/pip install torch==2.13.0 "flwr[simulation]"   # torch: the CPU wheel
Run: python benchmarks/bench_flower.py [--flwr-python /tmp/flwr-venv/bin/python] [--rounds 40]
     [--repeat 3] [--modes grpc,simulation]
(the same file, started by that interpreter with --flower MODE, is the Flower side).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE = Path(__file__).resolve().parents[1] / "tether" / "datasets" / "mnist_sample"
GROUPS = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))
MEAN, STD = 0.1307, 0.3081
BATCH, BATCHES, LR, SEED = 32, 10, 0.1, 1  # seeds per round and worker as tether's


# ---- the job, in plain PyTorch (both sides) -----------------------------------------------------


class Net(nn.Module):
    """The websocket tutorial's CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def mnist(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded sample, normalized as `tether worker` serves it (NCHW, float32)."""
    prefix = "train" if train else "t10k"
    images = gzip.decompress((SAMPLE / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((SAMPLE / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())
    x = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(labels, np.uint8, offset=8)
    data = (torch.from_numpy(x.astype(np.float32)) / 255 - MEAN) / STD
    return data.contiguous(), torch.from_numpy(y.astype(np.int64))


def part(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    data, targets = mnist(train=True)
    keep = torch.isin(targets, torch.tensor(GROUPS[index])).nonzero().flatten()
    return data[keep].contiguous(), targets[keep].contiguous()


def local_fit(model: nn.Module, data: torch.Tensor, targets: torch.Tensor, seed: int) -> float:
    """What each worker does per round: 10 shuffled batches of 32, SGD lr 0.1; seconds."""
    start = time.perf_counter()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for b in range(BATCHES):
        index = order[b * BATCH : (b + 1) * BATCH]
        optimizer.zero_grad()
        F.nll_loss(model(data[index]), targets[index]).backward()
        optimizer.step()
    return time.perf_counter() - start


def accuracy(state: dict[str, torch.Tensor]) -> float:
    model = Net()
    model.load_state_dict(state)
    data, targets = mnist(train=False)
    with torch.no_grad():
        return float((model.eval()(data).argmax(1) == targets).float().mean())


def worker_threads() -> int:
    return max(1, (os.cpu_count() or 1) // len(GROUPS))


# ---- Flower's side (runs in the Flower environment) ---------------------------------------------


def flower_client(index: int):
    import flwr as fl

    data, targets = part(index)
    model = Net()
    keys = list(model.state_dict())

    class Client(fl.client.NumPyClient):
        def get_parameters(self, config):
            return [v.numpy() for v in model.state_dict().values()]

        def fit(self, parameters, config):
            model.load_state_dict(
                {k: torch.from_numpy(np.copy(p)) for k, p in zip(keys, parameters, strict=True)}
            )
            seconds = local_fit(model, data, targets, int(config["seed"]) + index)
            return self.get_parameters({}), BATCH * BATCHES, {"seconds": seconds}

    return Client()


def flower_strategy(initial: list[np.ndarray]):
    import flwr as fl

    return fl.server.strategy.FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=3,
        min_evaluate_clients=0,
        min_available_clients=3,
        on_fit_config_fn=lambda r: {"seed": SEED * 1_000_003 + r * 1009},
        initial_parameters=fl.common.ndarrays_to_parameters(initial),
    )


def run_flower(mode: str, rounds: int) -> dict:
    """One Flower job; its wall time (rounds only, no teardown) and the final model's accuracy."""
    import flwr as fl

    torch.manual_seed(SEED)
    initial = [v.numpy() for v in Net().state_dict().values()]
    final: list = []
    strategy = flower_strategy(initial)
    aggregate = strategy.aggregate_fit

    ends: list[float] = []
    slowest: list[float] = []

    def keep_last(server_round, results, failures):
        merged = aggregate(server_round, results, failures)
        final[:] = fl.common.parameters_to_ndarrays(merged[0])
        ends.append(time.perf_counter())
        slowest.append(max(float(r.metrics["seconds"]) for _, r in results))
        return merged

    strategy.aggregate_fit = keep_last
    manager = _clock_when_all_joined()
    config = fl.server.ServerConfig(num_rounds=rounds)
    clients: list[subprocess.Popen] = []
    if mode == "grpc":
        port = _free_port()
        env = dict(os.environ, OMP_NUM_THREADS=str(worker_threads()))
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--flower-client",
                    str(i),
                    "--address",
                    f"127.0.0.1:{port}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(3)
        ]
        fl.server.start_server(
            server_address=f"127.0.0.1:{port}",
            config=config,
            strategy=strategy,
            client_manager=manager,
        )
    else:
        fl.simulation.start_simulation(
            client_fn=lambda context: flower_client(
                int(context.node_config["partition-id"])
            ).to_client(),
            num_clients=3,
            config=config,
            strategy=strategy,
            client_manager=manager,
            client_resources={"num_cpus": 1, "num_gpus": 0},
            ray_init_args={"num_cpus": os.cpu_count(), "include_dashboard": False},
        )
    seconds = ends[-1] - manager.all_joined  # the last aggregation, before any teardown
    for client in clients:
        client.wait(60)
    state = dict(
        zip(Net().state_dict(), (torch.from_numpy(np.copy(a)) for a in final), strict=True)
    )
    rounds = [b - a for a, b in itertools.pairwise(ends)]  # rounds 2.. (round 1 warms up)
    return {
        "seconds": seconds,
        "accuracy": accuracy(state),
        "training": _median(slowest[1:]),
        "overhead": _median([r - t for r, t in zip(rounds, slowest[1:], strict=True)]),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _clock_when_all_joined():
    """A client manager noting when the third client joined: the clock starts there, with the
    workers up, as tether's does."""
    import flwr as fl

    class Clocked(fl.server.SimpleClientManager):
        all_joined = 0.0

        def register(self, client) -> bool:
            added = super().register(client)
            if len(self) == len(GROUPS):
                self.all_joined = time.perf_counter()
            return added

    return Clocked()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- tether's side -----------------------------------------------------------------------------


def run_tether(rounds: int, log_dir: Path) -> dict:
    from tether.cli.demo import tutorial_workers
    from tether.federated.coordinator import Coordinator
    from tether.federated.delegated.training import TrainConfig
    from tether.federated.models import Net as TetherNet
    from tether.transports.websocket import connect

    with tutorial_workers(log_dir, evaluator=False) as (workers, _, token):
        handles = {n: connect(w.url, token=token, id=n) for n, w in workers.items()}
        torch.manual_seed(SEED)
        run = Coordinator(
            TetherNet(),
            handles,
            rounds=rounds,
            log=lambda line: None,
            config=TrainConfig(
                batch_size=BATCH, max_batches=BATCHES, optimizer_args={"lr": LR}, seed=SEED
            ),
        )
        start = time.perf_counter()
        result = run.run()
        seconds = time.perf_counter() - start
    slowest = [max(t["seconds"] for t in r["train"].values()) for r in result.history[1:]]
    overhead = [r["train_seconds"] - t for r, t in zip(result.history[1:], slowest, strict=True)]
    return {
        "seconds": seconds,
        "accuracy": accuracy(result.state),
        "training": _median(slowest),
        "overhead": _median(overhead),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--flwr-python", default="/tmp/flwr-venv/bin/python")
    parser.add_argument("--modes", default="grpc,simulation", help="Flower modes to run")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each job")
    parser.add_argument("--flower", choices=["grpc", "simulation"], help=argparse.SUPPRESS)
    parser.add_argument("--flower-client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_client is not None:
        from flwr.compat.client.app import start_client

        start_client(
            server_address=args.address,
            client=flower_client(args.flower_client).to_client(),
            insecure=True,
        )
        return
    if args.flower:
        print(json.dumps(run_flower(args.flower, args.rounds)))
        return
    import statistics
    import tempfile

    if not Path(args.flwr_python).exists():
        print(f"Flower's interpreter {args.flwr_python} is not there: see this file's docstring")
        return

    print(
        f"{args.rounds} rounds, 3 workers x {BATCHES} batches of {BATCH}, "
        f"{os.cpu_count()} cores, {worker_threads()} torch thread(s) per worker; "
        f"{args.repeat} alternating run(s) each; load average {os.getloadavg()[0]:.1f}"
    )
    labels = {
        "tether": "tether (3 worker processes, websocket)",
        "grpc": "Flower (3 client processes, gRPC)",
        "simulation": "Flower (Ray simulation)",
    }
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):  # alternate, so a busy machine weighs on every job alike
        runs.setdefault("tether", []).append(
            run_tether(args.rounds, Path(tempfile.mkdtemp(prefix="bench-flower-")))
        )
        for mode in args.modes.split(","):
            done = subprocess.run(
                [args.flwr_python, __file__, "--flower", mode, "--rounds", str(args.rounds)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(f"Flower {mode} failed:\n{done.stderr[-3000:]}")
                continue
            runs.setdefault(mode, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    print(
        f"{'job':40} {'wall s (each run)':>20} {'median':>7} {'x tether':>9} "
        f"{'training ms':>12} {'overhead ms':>12} {'accuracy':>9}"
    )
    for key, found in runs.items():
        each = " ".join(f"{r['seconds']:.1f}" for r in found)
        median = statistics.median(r["seconds"] for r in found)
        ratio = statistics.median(
            r["seconds"] / t["seconds"] for r, t in zip(found, runs["tether"], strict=False)
        )
        training, overhead = (
            statistics.median(r[k] for r in found) for k in ("training", "overhead")
        )
        print(
            f"{labels[key]:40} {each:>20} {median:7.2f} {ratio:9.2f} "
            f"{1000 * training:12.1f} {1000 * overhead:12.1f} "
            f"{100 * found[-1]['accuracy']:8.2f}%"
        )
    print(
        "per round (medians, rounds 2 on): training = the slowest worker's, as it measured "
        "it; overhead = the round's wall time minus that: what the framework adds"
    )


if __name__ == "__main__":
    main()
