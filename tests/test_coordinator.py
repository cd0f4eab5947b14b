"""The coordinator: rounds that equal plain-PyTorch FedAvg, the tutorial's report, faults
(workers that die, time out or refuse; a coordinator killed and resumed), the command line."""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tether as sy
from tether.client import Client
from tether.errors import ConnectionLostError
from tether.federated import coordinator as coord
from tether.federated import report
from tether.federated.coordinator import Coordinator, FederationError, Net, mlp
from tether.federated.demo import mnist_tensors, tutorial_workers
from tether.federated.training import TrainConfig
from tether.net import connect
from tether.wire import Call

GROUPS = {"alice": (0, 1, 2, 3), "bob": (4, 5, 6), "charlie": (7, 8, 9)}


@pytest.fixture(scope="module")
def parts() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The embedded sample split by digit groups, as the tutorial's workers hold it."""
    data, targets = mnist_tensors(train=True)
    out = {}
    for name, group in GROUPS.items():
        keep = torch.isin(targets, torch.tensor(group)).nonzero().flatten()
        out[name] = (data[keep].contiguous(), targets[keep].contiguous())
    return out


@pytest.fixture(scope="module")
def test_part() -> tuple[torch.Tensor, torch.Tensor]:
    data, targets = mnist_tensors(train=False)
    return data[:2000].contiguous(), targets[:2000].contiguous()


def virtual_workers(parts, keys: dict[str, str] | None = None) -> dict[str, sy.VirtualWorker]:
    workers = {}
    for name, part in parts.items():
        worker = sy.VirtualWorker(id=name)
        worker.publish((keys or {}).get(name, "mnist"), part)
        workers[name] = worker
    return workers


def evaluator(test_part) -> sy.VirtualWorker:
    worker = sy.VirtualWorker(id="testing")
    worker.publish("mnist_testing", test_part)
    return worker


def quiet(lines: list[str]):
    return lines.append


def plain_fit(model: torch.nn.Module, data, targets, seed: int, batches: int = 10) -> None:
    """What a worker's fit does, in plain PyTorch: SGD(lr=0.1) on shuffled batches of 32."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for b in range(batches):
        index = order[b * 32 : (b + 1) * 32]
        optimizer.zero_grad()
        F.nll_loss(model(data[index]), targets[index]).backward()
        optimizer.step()


def test_rounds_equal_plain_pytorch_fedavg(parts) -> None:
    """Two rounds through the coordinator give the weights that plain PyTorch gets doing the
    same work: each worker's 5 batches from the global model, then the sample-weighted mean."""
    torch.manual_seed(0)
    model = Net()
    start = copy.deepcopy(model.state_dict())
    config = TrainConfig(max_batches=5, seed=5)
    result = Coordinator(
        model, virtual_workers(parts), config=config, rounds=2, log=quiet([])
    ).run()
    state = start
    for r in (1, 2):
        trained = []
        for i, (data, targets) in enumerate(parts.values()):
            local = Net()
            local.load_state_dict(state)
            plain_fit(local, data, targets, seed=coord._round_seed(5, r, i), batches=5)
            trained.append(local.state_dict())
        state = {k: sum(t[k] for t in trained) / 3 for k in state}  # 160 samples each
    for key, value in state.items():  # float rounding, amplified by a round of training
        torch.testing.assert_close(result.state[key], value, atol=1e-4, rtol=1e-3)
    assert [r["workers"] for r in result.history] == [list(GROUPS)] * 2


def test_after_round_one_each_worker_predicts_its_own_digits(parts, test_part) -> None:
    torch.manual_seed(1)
    lines: list[str] = []
    result = Coordinator(
        Net(),
        virtual_workers(parts),
        evaluator=evaluator(test_part),
        config=TrainConfig(max_batches=10, seed=1),
        rounds=1,
        log=lines.append,
    ).run()
    evaluated = result.history[0]["eval"]
    for i, name in enumerate(GROUPS):
        shares = report.group_shares(
            evaluated[f"Model update {name}"]["predicted"], list(GROUPS.values())
        )
        assert shares[i] >= 0.95, (name, shares)
    assert "Model update alice: Percentage numbers 0-3: 100%, 4-6: 0%, 7-9: 0%" in lines
    federated = evaluated[report.FEDERATED]
    assert (
        f"Federated model: Average loss: {federated['loss']:.4f}, Accuracy: "
        f"{federated['correct']}/2000 ({100 * federated['accuracy']:.2f}%)"
    ) in lines


class FlakyTransport:
    """An in-process transport whose n-th fit call fails (as a lost connection) for n in
    `fail_on`, or waits for `gate` for n in `slow_on`."""

    def __init__(
        self,
        inner,
        fail_on: set[int] = frozenset(),
        slow_on: set[int] = frozenset(),
        gate: threading.Event | None = None,
    ) -> None:
        self.inner, self.fail_on, self.slow_on, self.gate = inner, fail_on, slow_on, gate
        self.fits = 0

    def exchange(self, commands: list, adopted: frozenset[int] = frozenset()):
        if any(isinstance(c, Call) and c.op == coord.FIT for c in commands):
            self.fits += 1
            if self.fits in self.fail_on:
                raise ConnectionLostError("lost the connection (injected)")
            if self.fits in self.slow_on and self.gate is not None:
                self.gate.wait()
        return self.inner.exchange(commands, adopted)

    def close(self) -> None:
        self.inner.close()


def flaky(worker: sy.VirtualWorker, **options) -> sy.VirtualWorker:
    worker.client = Client(worker, FlakyTransport(worker.client.transport, **options))
    return worker


def test_a_worker_that_drops_out_is_left_out_and_tried_again(parts) -> None:
    workers = virtual_workers(parts)
    flaky(workers["bob"], fail_on={3, 4})  # bob's 3rd and 4th fit calls: rounds 3 and 4
    lines: list[str] = []
    torch.manual_seed(0)
    result = Coordinator(
        mlp(), workers, config=TrainConfig(max_batches=2), rounds=6, min_workers=2, log=lines.append
    ).run()
    left_out = [sorted(r["left_out"]) for r in result.history]
    assert left_out == [[], [], ["bob"], ["bob"], [], []]
    assert "Round 3: worker bob left out (unreachable: lost the connection (injected))" in lines
    assert "Worker bob missed round(s) 3, 4; the others ran without it" in lines
    assert result.history[4]["workers"] == list(GROUPS)  # tried again, and back in round 5


def test_a_slow_worker_misses_the_round_and_rejoins(parts) -> None:
    """charlie's round-2 answer is held back: it misses round 2's timeout, is still busy at
    round 3 (then let go), and trains again in round 4."""
    gate = threading.Event()
    workers = virtual_workers(parts)
    flaky(workers["charlie"], slow_on={2}, gate=gate)

    def let_go(r: int) -> None:
        if r == 3:
            gate.set()
            busy = next(link for link in run.links if link.name == "charlie").busy
            busy.thread.join()

    run = Coordinator(
        mlp(),
        workers,
        config=TrainConfig(max_batches=1),
        rounds=4,
        round_timeout=0.5,
        log=quiet([]),
        on_round_start=let_go,
    )
    result = run.run()
    left = [r["left_out"].get("charlie") for r in result.history]
    assert left == [None, "missed the round timeout of 0.5 s", "still busy with round 2", None]
    assert "charlie" in result.history[3]["workers"]


def test_too_few_workers_stop_the_run_with_a_clear_message(parts, tmp_path: Path) -> None:
    workers = virtual_workers(parts)
    flaky(workers["bob"], fail_on={2, 3, 4})
    flaky(workers["charlie"], fail_on={2, 3, 4})
    run = Coordinator(
        mlp(),
        workers,
        config=TrainConfig(max_batches=1),
        rounds=3,
        min_workers=2,
        checkpoint_dir=tmp_path,
        log=quiet([]),
    )
    with pytest.raises(FederationError) as caught:
        run.run()
    message = str(caught.value)
    assert message.startswith("round 2: 1 of 3 workers answered (alice), fewer than min_workers=2")
    assert "bob: unreachable" in message and "--resume" in message
    assert json.loads((tmp_path / coord.CHECKPOINT_JSON).read_text())["round"] == 1


def test_a_worker_without_the_dataset_is_named_and_dropped(parts) -> None:
    workers = virtual_workers(parts, keys={"bob": "digits"})
    lines: list[str] = []
    result = Coordinator(
        mlp(), workers, config=TrainConfig(max_batches=1), rounds=2, log=lines.append
    ).run()
    assert result.history[1]["workers"] == ["alice", "charlie"]
    refusal = next(line for line in lines if line.startswith("Worker bob refused"))
    assert "worker 'bob' has no dataset 'mnist'" in refusal and "digits" in refusal
    with pytest.raises(FederationError, match="has no dataset 'mnist'"):
        Coordinator(
            mlp(), virtual_workers(parts, keys=dict.fromkeys(GROUPS, "x")), rounds=1, log=quiet([])
        ).run()


def test_an_interrupted_run_resumes_to_the_same_result(parts, tmp_path: Path) -> None:
    """Ctrl-C during round 4 leaves the checkpoint of round 3; resuming finishes rounds 4-6
    with exactly the weights of an uninterrupted run."""
    config = TrainConfig(max_batches=2, seed=3)

    def run(checkpoint_dir: Path = tmp_path, **options) -> coord.FederationResult:
        torch.manual_seed(0)
        return Coordinator(
            mlp(),
            virtual_workers(parts),
            config=config,
            rounds=6,
            checkpoint_dir=checkpoint_dir,
            log=quiet([]),
            **options,
        ).run()

    def interrupt(r: int) -> None:
        if r == 4:
            raise KeyboardInterrupt

    whole = run(checkpoint_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(on_round_start=interrupt)
    assert json.loads((tmp_path / coord.CHECKPOINT_JSON).read_text())["round"] == 3
    lines: list[str] = []
    torch.manual_seed(99)  # a different initial model: the checkpoint's weights win
    resumed = Coordinator(
        mlp(),
        virtual_workers(parts),
        config=config,
        rounds=6,
        checkpoint_dir=tmp_path,
        resume=True,
        log=lines.append,
    ).run()
    assert f"Resuming after round 3 from {tmp_path}" in lines
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    for key, value in whole.state.items():
        assert torch.equal(resumed.state[key], value), key
    with pytest.raises(FederationError, match="another model or training config"):
        Coordinator(
            mlp(),
            virtual_workers(parts),
            config=TrainConfig(max_batches=3),
            rounds=6,
            checkpoint_dir=tmp_path,
            resume=True,
            log=quiet([]),
        ).run()


# ---- the command line -------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    coord.add_arguments(parser)
    return parser.parse_args(argv)


def test_federation_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(
        'rounds = 12\nlr = 0.05\nmin_workers = 2\ngroups = ["0-4", "5-9"]\n'
        '[workers]\nalice = "ws://127.0.0.1:1"\nbob = "ws://127.0.0.1:2"\n'
        '[evaluator]\ntesting = "ws://127.0.0.1:3"\n'
    )
    settings = coord._settings(parse(["--federation", str(path), "--lr", "0.2"]))
    assert settings["training_rounds"] == 12 and settings["lr"] == 0.2
    assert settings["workers"] == {"alice": "ws://127.0.0.1:1", "bob": "ws://127.0.0.1:2"}
    assert settings["evaluator"] == ("testing", "ws://127.0.0.1:3")
    assert coord.parse_groups(settings["groups"]) == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert coord.train_config(settings).optimizer_args == {"lr": 0.2}
    example = Path(__file__).parents[1] / "examples" / "websocket_mnist" / "federation.toml"
    tutorial = coord._settings(parse(["--federation", str(example)]))
    assert (tutorial["training_rounds"], tutorial["federate_after_n_batches"]) == (40, 10)
    assert list(tutorial["workers"]) == ["alice", "bob", "charlie"]
    path.write_text("rounds = 3\nworkerz = 1\n")
    with pytest.raises(ValueError, match="unknown keys \\['workerz'\\]"):
        coord._settings(parse(["--federation", str(path)]))


def test_main_goes_on_without_an_unreachable_worker(parts, tmp_path, capsys) -> None:
    workers = virtual_workers(parts)

    def fake_connect(url: str, token=None, id=None):
        if id == "bob":
            raise ConnectionLostError(f"cannot reach a worker at {url}: refused")
        return workers[id]

    argv = [
        "--worker",
        "alice=ws://127.0.0.1:1",
        "--worker",
        "bob=ws://127.0.0.1:2",
        "--worker",
        "charlie=ws://127.0.0.1:3",
        "--training_rounds",
        "2",
        "--federate_after_n_batches",
        "1",
        "--model",
        "mlp",
        "--no-progress",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert coord.main(parse(argv), connect=fake_connect) == 0
    captured = capsys.readouterr()
    assert "worker bob at ws://127.0.0.1:2 is unreachable" in captured.err
    assert "Round 2: worker bob left out (unreachable: cannot reach" in captured.out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "metrics.csv",
        "metrics.json",
        "accuracy.png",
    }
    assert coord.main(parse([*argv, "--min_workers", "3"]), connect=fake_connect) == 1
    assert "2 of 3 workers are reachable, fewer than --min_workers 3" in capsys.readouterr().err


# ---- real worker processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """alice, bob and charlie as `tether worker` processes on 127.0.0.1 (no evaluator)."""
    with tutorial_workers(tmp_path_factory.mktemp("workers"), evaluator=False) as started:
        yield started


def test_killed_coordinator_resumes_from_its_checkpoint(processes, tmp_path: Path) -> None:
    workers, _, token = processes
    checkpoint = tmp_path / "checkpoint"
    argv = [
        sys.executable,
        "-m",
        "tether.federated.coordinator",
        "--training_rounds",
        "6",
        "--federate_after_n_batches",
        "2",
        "--no-progress",
        "--checkpoint",
        str(checkpoint),
        *[f"--worker={name}={w.url}" for name, w in workers.items()],
    ]
    env = dict(os.environ, TETHER_TOKEN=token)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = 0
    while done < 3 and first.poll() is None:
        time.sleep(0.01)
        state = checkpoint / coord.CHECKPOINT_JSON
        done = json.loads(state.read_text())["round"] if state.exists() else 0
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert done >= 3, first.stdout.read().decode()
    resumed = subprocess.run(
        [*argv, "--resume"], env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming after round {done} from {checkpoint}" in resumed.stdout
    assert f"Training round {done + 1}/6" in resumed.stdout
    assert "Training round 1/6" not in resumed.stdout
    final = json.loads((checkpoint / coord.CHECKPOINT_JSON).read_text())
    assert [r["round"] for r in final["history"]] == [1, 2, 3, 4, 5, 6]


def test_a_killed_worker_process_is_left_out(processes, tmp_path: Path) -> None:
    """Kill bob's process during round 3 of 6: training finishes without it, the log says
    which rounds ran without it, the results are written."""
    workers, _, token = processes
    handles = {name: connect(w.url, token=token, id=name) for name, w in workers.items()}
    lines: list[str] = []

    def kill(r: int) -> None:
        if r == 3:
            workers["bob"].kill()

    torch.manual_seed(0)
    result = Coordinator(
        Net(),
        handles,
        config=TrainConfig(max_batches=2),
        rounds=6,
        checkpoint_dir=tmp_path / "checkpoint",
        log=lines.append,
        on_round_start=kill,
    ).run()
    assert [sorted(r["left_out"]) for r in result.history] == [[]] * 2 + [["bob"]] * 4
    assert "Worker bob missed round(s) 3, 4, 5, 6; the others ran without it" in lines
    assert any(
        line.startswith("Round 4: worker bob left out (unreachable: cannot reach") for line in lines
    )
    written = report.save_metrics(result.history, list(GROUPS.values()), tmp_path)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 + 4 * 3  # header, 3 workers x 2 rounds, 2 + 1 left out x 4
    assert all(p.exists() for p in written)


def test_an_answer_that_is_not_the_model_is_refused() -> None:
    state = mlp().state_dict()
    good = {"weights": dict(state), "samples": 32, "losses": [1.0], "seconds": 0.1}
    assert coord._checked(good, state, "alice") is good
    for bad in [
        None,
        {**good, "weights": {k: v[:1] for k, v in state.items()}},
        {**good, "weights": {**state, "extra": torch.ones(1)}},
        {**good, "samples": 0},
        {**good, "samples": "32"},
    ]:
        with pytest.raises(FederationError, match="worker 'eve' answered with something"):
            coord._checked(bad, state, "eve")
