"""The simulation engine (issue 24, part 2): rounds that equal plain PyTorch doing the same work
and a Coordinator over VirtualWorkers with the same seeds, strategies driven through their
three steps, partitions, history and metrics files, clear errors, and `tether simulate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tether as sy
from tether import cli
from tether.cli.demo import mnist_tensors
from tether.federated import coordinator as coord
from tether.federated.coordinator import Coordinator
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import mlp
from tether.federated.simulation import (
    ClientResult,
    SequentialBackend,
    Simulation,
)
from tether.federated.simulation.fold import RunningAverage
from tether.federated.strategies import FedAvg, Update, weighted_average

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    data, targets = mnist_tensors(train=True)
    return data[:600].contiguous(), targets[:600].contiguous()


@pytest.fixture(scope="module")
def parts() -> list[torch.Tensor]:
    """Four clients of unequal sizes (FedAvg weights them), one of them not a batch multiple."""
    return [
        torch.arange(0, 40),
        torch.arange(40, 110),
        torch.arange(110, 200),
        torch.arange(300, 333),
    ]


class Held(FedAvg):
    """FedAvg through its own `aggregate`, so the engine hands it every update (no folding);
    it records how many it got."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.seen: list[int] = []

    def aggregate(self, round, updates, global_state):
        self.seen.append(len(updates))
        return super().aggregate(round, updates, global_state)


def plain_rounds(state, data, targets, parts, rounds: int, seed: int, lr: float = 0.1):
    """FedAvg in plain PyTorch: one model, each client's start state loaded, one epoch of
    shuffled batches of 32 (the coordinator's seed per round and client), the samples-weighted
    mean at the end."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for r in range(1, rounds + 1):
        total = {k: torch.zeros_like(v) for k, v in state.items()}
        for i, part in enumerate(parts):
            model.load_state_dict(state)
            optimizer.state.clear()
            x, y = data[part], targets[part]
            generator = torch.Generator().manual_seed(coord.round_seed(seed, r, i))
            for index in torch.randperm(len(x), generator=generator).split(32):
                optimizer.zero_grad(set_to_none=True)
                F.nll_loss(model(x[index]), y[index]).backward()
                optimizer.step()
            for key, value in model.state_dict().items():
                total[key].add_(value, alpha=len(part))
        state = {k: v / sum(len(p) for p in parts) for k, v in total.items()}
    return state


def test_two_rounds_equal_plain_pytorch_fedavg(mnist, parts) -> None:
    torch.manual_seed(0)
    model = mlp()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(seed=3)
    result = Simulation(model, mnist, partition=parts, config=config, rounds=2).run()
    expected = plain_rounds(start, *mnist, parts, rounds=2, seed=3)
    for key, value in expected.items():
        torch.testing.assert_close(result.state[key], value, atol=1e-6, rtol=0)
    assert not torch.equal(result.state["1.weight"], start["1.weight"])  # it trained
    assert result.model.state_dict()["1.weight"].equal(result.state["1.weight"])
    held = Held()
    again = Simulation(mlp(), mnist, partition=parts, strategy=held, config=config, rounds=2)
    again.model.load_state_dict(start)
    again.state = {k: v.clone() for k, v in start.items()}
    for key, value in again.run().state.items():  # every update held: the same weights
        torch.testing.assert_close(value, result.state[key], atol=1e-6, rtol=0)
    assert held.seen == [4, 4]


def test_a_simulation_predicts_the_coordinator_over_virtual_workers(mnist, parts) -> None:
    """The same model, partition, strategy (sampling 3 of 4 clients) and seeds: the weights a
    Coordinator gets from VirtualWorkers running `fit`."""
    torch.manual_seed(1)
    model = mlp()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(seed=7, optimizer_args={"lr": 0.05, "momentum": 0.5})
    simulated = Simulation(
        model, mnist, partition=parts, strategy=Held(fraction=0.75), config=config, rounds=3
    )
    result = simulated.run()
    workers = {}
    for i, part in enumerate(parts):
        worker = sy.VirtualWorker(id=f"client{i}")
        worker.publish("mnist", (mnist[0][part].contiguous(), mnist[1][part].contiguous()))
        workers[f"client{i}"] = worker
    deployed_model = mlp()
    deployed_model.load_state_dict(start)
    deployed = Coordinator(
        deployed_model,
        workers,
        config=config,
        rounds=3,
        strategy=Held(fraction=0.75),
        log=[].append,
    ).run()
    assert [len(r["workers"]) for r in deployed.history] == [3, 3, 3]
    assert [r["clients"] for r in result.history] == [3, 3, 3]
    for key, value in deployed.state.items():
        torch.testing.assert_close(result.state[key], value, atol=1e-6, rtol=0)


def test_folding_equals_the_weighted_average_integer_tensors_included() -> None:
    generator = torch.Generator().manual_seed(0)
    states = [
        {"w": torch.randn(5, 3, generator=generator), "steps": torch.tensor(n)} for n in (3, 8, 10)
    ]
    fold = RunningAverage()
    for i, (state, samples) in enumerate(zip(states, (10, 30, 60), strict=True)):
        fold.add(Update(f"c{i}", state, samples, steps=2))
    folded = fold.update({"w": torch.float32, "steps": torch.int64})
    expected = weighted_average(states, [10, 30, 60])
    torch.testing.assert_close(folded.state["w"], expected["w"], atol=1e-6, rtol=0)
    assert folded.state["steps"].dtype == torch.int64
    assert int(folded.state["steps"]) == int(expected["steps"]) == 9  # 8.7, rounded
    assert (folded.samples, folded.steps) == (100, 6)
    with pytest.raises(ValueError, match="same model"):
        fold.add(Update("odd", {"v": torch.zeros(1)}, 1))


def test_partition_specs_history_and_evaluation(mnist) -> None:
    test = (mnist[0][500:], mnist[1][500:])
    seen = []
    simulation = Simulation(
        mlp(),
        (mnist[0][:500], mnist[1][:500]),
        partition="labels-per-client:5:2",
        rounds=3,
        test=test,
        eval_every=2,
        on_round=seen.append,
    )
    labels = [sorted(set(mnist[1][p].tolist())) for p in simulation.parts]
    assert simulation.clients == [f"client{i}" for i in range(5)]
    assert all(len(held) == 2 for held in labels)
    history = simulation.run().history
    assert seen == history
    assert [r["round"] for r in history] == [1, 2, 3]
    assert ["accuracy" in r for r in history] == [True, False, True]  # round 1, every 2, last
    held = sum(len(p) for p in simulation.parts)  # labels no client holds are left out
    assert all(r["clients"] == 5 and r["samples"] == held and r["seconds"] > 0 for r in history)
    assert 0 < history[-1]["accuracy"] <= 1 and history[-1]["test_loss"] > 0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    dirichlet = Simulation(mlp(), mnist, partition="dirichlet:6:0.5", seed=2)
    assert len(dirichlet.parts) == 6 and sum(len(p) for p in dirichlet.parts) == 600


def test_a_backend_gets_each_clients_job_and_seed(mnist, parts) -> None:
    """The backend interface: jobs in order, each with its client's indices and the seed the
    coordinator would give it; the engine aggregates the results the backend returns."""

    class Recording(SequentialBackend):
        def __init__(self) -> None:
            super().__init__()
            self.jobs: list = []

        def fit_clients(self, global_state, jobs):
            self.jobs.append(list(jobs))
            return list(super().fit_clients(global_state, jobs))

    backend = Recording()
    Simulation(mlp(), mnist, partition=parts, rounds=2, seed=4, backend=backend).run()
    for r, jobs in enumerate(backend.jobs, 1):
        assert [j.client for j in jobs] == [f"client{i}" for i in range(4)]
        assert [j.task.config.seed for j in jobs] == [coord.round_seed(4, r, i) for i in range(4)]
        assert all(torch.equal(j.indices, p) for j, p in zip(jobs, parts, strict=True))
    assert isinstance(ClientResult, type)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partition": "iid:0"}, "number of workers must be >= 1"),
        ({"partition": "nine:3"}, "unknown kind 'nine'"),
        ({"partition": [torch.tensor([0, 1]), torch.tensor([], dtype=torch.int64)]}, "empty"),
        ({"partition": [torch.tensor([0, 600])]}, "outside the dataset's 600 samples"),
        ({"partition": [torch.tensor([0.5])]}, "1-D tensor of sample indices"),
        ({"partition": "iid:2", "rounds": 0}, "rounds must be a positive integer"),
        ({"partition": "iid:2", "config": {"lr": 0.1}}, "unknown training config keys"),
        ({"partition": "iid:2", "seed": "1"}, "seed must be an integer"),
    ],
)
def test_a_bad_argument_is_named(mnist, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        Simulation(mlp(), mnist, **options)


def test_tether_simulate_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tether", "simulate", "--clients", "3", "--rounds", "2"]
    flags = ["--samples-per-client", "40", "--partition", "shards:2", "--no-progress"]
    done = subprocess.run(
        [*command, *flags, "--out", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "2 rounds of 3 clients" in done.stdout and "test accuracy" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["clients"] == 3 and metrics["settings"]["partition"] == "shards:2"
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["samples"] == 120 and 0 <= r["accuracy"] <= 1 for r in metrics["rounds"])
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("round,clients,samples,train_loss") and len(rows) == 3
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--partition", "dirichlet:x"], "alpha must be a number, got 'x'"),
        (["--clients", "4", "--partition", "iid:5"], "gives 5 clients, --clients 4"),
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--fraction", "1.5"], "--strategy fedavg: fraction must be in (0, 1]"),
    ],
)
def test_tether_simulate_names_a_bad_flag(flags, message, capsys) -> None:
    assert cli.main(["simulate", *flags]) == 1
    err = capsys.readouterr().err
    assert "tether simulate: error: " in err and message in err


@pytest.mark.parametrize(("before", "after"), [("", "True"), ("gc.disable(); ", "False")])
def test_importing_tether_freezes_what_it_made_and_restores_the_collector(before, after) -> None:
    """`import tether` pauses the cycle collector while it imports (it shortens the time to a
    simulation's first round) and leaves it as it found it, torch's and tether's objects frozen."""
    script = f"import gc; {before}import tether; print(gc.isenabled(), gc.get_freeze_count())"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        check=True,
    )
    enabled, frozen = done.stdout.split()
    assert enabled == after
    assert int(frozen) > 100_000  # torch's modules, functions and tables, and tether's
