"""The coordinator: rounds that equal plain-PyTorch FedAvg, the tutorial's report, faults
(workers that die, time out or refuse; a coordinator killed and resumed), the command line."""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tether as sy
from tether.cli import train as train_cli
from tether.cli.demo import mnist_tensors, tutorial_workers
from tether.federated import coordinator as coord
from tether.federated import report, strategies
from tether.federated.checkpoint import CHECKPOINT_JSON
from tether.federated.coordinator import Coordinator, FederationError
from tether.federated.delegated import remote
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import Net, mlp
from tether.transports.websocket import connect

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


def plain_fit(model: torch.nn.Module, data, targets, seed: int, batches: int | None = None) -> None:
    """What a worker's fit does, in plain PyTorch: SGD(lr=0.1) on shuffled batches of 32, the
    first `batches` of them (None: the whole epoch, the last batch short)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for index in order.split(32)[:batches]:
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
            plain_fit(local, data, targets, seed=coord.round_seed(5, r, i), batches=5)
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
    assert json.loads((tmp_path / CHECKPOINT_JSON).read_text())["round"] == 3
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


STATEFUL = {
    "fedavgm": lambda: strategies.FedAvgM(lr_decay=0.9),
    "fedadagrad": lambda: strategies.FedAdagrad(server_lr=0.05),
    "fedadam": lambda: strategies.FedAdam(server_lr=0.05),
    "fedyogi": lambda: strategies.FedYogi(server_lr=0.05),
    "scaffold": lambda: strategies.Scaffold(fraction=0.6),
    "dpfedavg": lambda: strategies.DPFedAvg(  # noiseless, so runs can repeat
        clip_norm=0.5, noise_multiplier=0.0, target_quantile=0.5, quantile_noise=0.0
    ),
}


@pytest.mark.parametrize("name", STATEFUL)
@pytest.mark.usefixtures("one_torch_thread")
def test_a_stateful_strategy_resumes_to_the_same_result(name, parts, tmp_path: Path) -> None:
    """Stopped in round 3 and resumed with a fresh strategy object, a run whose strategy keeps
    state (momentum, moments, control variates, an adaptive clip) ends with exactly the weights
    and the strategy state of an uninterrupted one. On one torch thread: the workers train
    concurrently, and with two, how a BLAS call splits its sums can change with what else runs
    at the time, so the last bits of a step could differ (FedAdagrad's division by sqrt(v)
    then magnified them: a CI run failed so); that is not what resuming is checked for."""
    config = TrainConfig(max_batches=2, seed=4)

    def run(checkpoint_dir: Path, **options) -> Coordinator:
        torch.manual_seed(0)
        coordinator = Coordinator(
            mlp(),
            virtual_workers(parts),
            config=config,
            rounds=5,
            strategy=STATEFUL[name](),
            checkpoint_dir=checkpoint_dir,
            log=quiet([]),
            **options,
        )
        coordinator.run()
        return coordinator

    def interrupt(r: int) -> None:
        if r == 3:
            raise KeyboardInterrupt

    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stopped", on_round_start=interrupt)
    resumed = run(tmp_path / "stopped", resume=True)
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4, 5]
    for key, value in whole.state.items():
        assert torch.equal(resumed.state[key], value), key
    kept, restored = whole.strategy.state_dict(), resumed.strategy.state_dict()
    assert kept.values == restored.values and kept.tensors.keys() == restored.tensors.keys()
    assert bool(kept.tensors) == (name != "dpfedavg")  # DP-FedAvg keeps numbers only
    for key, value in kept.tensors.items():
        assert torch.equal(restored.tensors[key], value), key


def test_a_checkpoint_resumes_only_with_its_own_strategy(parts, tmp_path: Path) -> None:
    def run(strategy: strategies.Strategy, rounds: int, resume: bool) -> None:
        Coordinator(
            mlp(),
            virtual_workers(parts),
            config=TrainConfig(max_batches=1),
            rounds=rounds,
            checkpoint_dir=tmp_path,
            strategy=strategy,
            resume=resume,
            log=quiet([]),
        ).run()

    run(strategies.FedAvgM(), rounds=1, resume=False)
    other = "made by strategy fedavgm, and this run uses fedadam"
    with pytest.raises(FederationError, match=other):
        run(strategies.FedAdam(), rounds=2, resume=True)


# ---- the command line -------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_federation_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(
        'rounds = 12\nlr = 0.05\nmin_workers = 2\ngroups = ["0-4", "5-9"]\n'
        '[workers]\nalice = "ws://127.0.0.1:1"\nbob = "ws://127.0.0.1:2"\n'
        '[evaluator]\ntesting = "ws://127.0.0.1:3"\n'
    )
    settings = train_cli._settings(parse(["--federation", str(path), "--lr", "0.2"]))
    assert settings["training_rounds"] == 12 and settings["lr"] == 0.2
    assert settings["workers"] == {"alice": "ws://127.0.0.1:1", "bob": "ws://127.0.0.1:2"}
    assert settings["evaluator"] == ("testing", "ws://127.0.0.1:3")
    assert train_cli.parse_groups(settings["groups"]) == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert train_cli.train_config(settings).optimizer_args == {"lr": 0.2}
    example = Path(__file__).parents[1] / "examples" / "websocket_mnist" / "federation.toml"
    tutorial = train_cli._settings(parse(["--federation", str(example)]))
    assert (tutorial["training_rounds"], tutorial["federate_after_n_batches"]) == (40, 10)
    assert list(tutorial["workers"]) == ["alice", "bob", "charlie"]
    path.write_text("rounds = 3\nworkerz = 1\n")
    with pytest.raises(ValueError, match="unknown keys \\['workerz'\\]"):
        train_cli._settings(parse(["--federation", str(path)]))


# ---- real worker processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """alice, bob and charlie as `tether worker` processes on 127.0.0.1 (no evaluator), for the
    tests that leave them running."""
    with tutorial_workers(tmp_path_factory.mktemp("workers"), evaluator=False) as started:
        yield started


@pytest.fixture
def own_processes(tmp_path: Path):
    """alice, bob and charlie as processes of this test alone, which it may kill."""
    with tutorial_workers(tmp_path / "workers", evaluator=False) as started:
        yield started


@contextmanager
def connected(workers, token: str):
    handles = {name: connect(w.url, token=token, id=name) for name, w in workers.items()}
    try:
        yield handles
    finally:
        for handle in handles.values():
            handle.close()


def test_fedavg_weights_unequal_workers_by_their_samples(processes, parts) -> None:
    """alice holds 2000 samples, bob and charlie 1500 each, and each trains one whole epoch: a
    round through worker processes gives plain PyTorch's FedAvg with weights 0.4/0.3/0.3. The
    unweighted mean is far outside the tolerance, so weighting every worker alike fails here."""
    workers, _, token = processes
    torch.manual_seed(0)
    model = mlp()
    start = copy.deepcopy(model.state_dict())
    config = TrainConfig(seed=11)  # max_batches None: one whole epoch per round
    with connected(workers, token) as handles:
        result = Coordinator(model, handles, config=config, rounds=1, log=quiet([])).run()
    sizes = [len(parts[name][1]) for name in GROUPS]
    assert sizes == [2000, 1500, 1500]
    assert [result.history[0]["train"][name]["samples"] for name in GROUPS] == sizes
    trained = plain_round(start, parts, r=1, seed=11)
    weighted = mean(trained, [n / sum(sizes) for n in sizes])
    unweighted = mean(trained, [1 / 3] * 3)
    for key, value in weighted.items():
        torch.testing.assert_close(result.state[key], value, atol=1e-5, rtol=1e-4)
    apart = max((result.state[k] - unweighted[k]).abs().max().item() for k in unweighted)
    assert apart > 1e-3, apart  # 100 times the tolerance: the test tells the two apart


def plain_round(state, parts, r: int, seed: int) -> list[dict]:
    """One round of FedAvg's training in plain PyTorch: each worker's whole epoch from `state`."""
    trained = []
    for i, (data, targets) in enumerate(parts.values()):
        local = mlp()
        local.load_state_dict(state)
        plain_fit(local, data, targets, seed=coord.round_seed(seed, r, i))
        trained.append(local.state_dict())
    return trained


def mean(trained: list[dict], shares: list[float]) -> dict:
    """The workers' weights averaged with these shares."""
    return {k: sum(w * t[k] for w, t in zip(shares, trained, strict=True)) for k in trained[0]}


def _coordinator_argv(workers, checkpoint: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tether.cli",
        "train",
        "--training_rounds",
        "6",
        "--federate_after_n_batches",
        "2",
        "--no-progress",
        "--checkpoint",
        str(checkpoint),
        *[f"--worker={name}={w.url}" for name, w in workers.items()],
        *extra,
    ]


def _final_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    meta = json.loads((checkpoint / CHECKPOINT_JSON).read_text())
    assert meta["round"] == 6
    return load_file(checkpoint / meta["weights"])


def test_killed_coordinator_resumes_from_its_checkpoint(processes, tmp_path: Path) -> None:
    """`tether train` killed (SIGKILL) after round 3 or later, then run with --resume: it goes
    on from the checkpoint's round and ends with the weights of a run never interrupted."""
    workers, _, token = processes
    env = dict(os.environ, TETHER_TOKEN=token)
    whole = subprocess.run(
        _coordinator_argv(workers, tmp_path / "whole"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert whole.returncode == 0, whole.stderr
    checkpoint = tmp_path / "checkpoint"
    argv = _coordinator_argv(workers, checkpoint)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = 0
    deadline = time.monotonic() + 120
    while done < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
        state = checkpoint / CHECKPOINT_JSON
        done = json.loads(state.read_text())["round"] if state.exists() else 0
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert 3 <= done < 6, first.stdout.read().decode()
    resumed = subprocess.run(
        [*argv, "--resume"], env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming after round {done} from {checkpoint}" in resumed.stdout
    assert f"Training round {done + 1}/6" in resumed.stdout
    assert "Training round 1/6" not in resumed.stdout
    final = json.loads((checkpoint / CHECKPOINT_JSON).read_text())
    assert [r["round"] for r in final["history"]] == [1, 2, 3, 4, 5, 6]
    expected, got = _final_weights(tmp_path / "whole"), _final_weights(checkpoint)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0), key


def test_killed_worker_processes_are_left_out_until_too_few_remain(
    own_processes, tmp_path: Path
) -> None:
    """bob's process is killed (SIGKILL) as round 3 of 6 begins: training finishes without it, the
    log says which rounds ran without it, the results are written. Then a run that needs 2
    workers loses charlie's process in round 2 too, and stops with a message naming both."""
    workers, _, token = own_processes
    lines: list[str] = []

    def killing(victims: list[str], at: int, lines: list[str]):
        """A log that records its lines and kills `victims` as round `at` begins, before its
        jobs go out (after they go out, a 2-batch fit can finish before the kill lands)."""

        def log(line: str) -> None:
            lines.append(line)
            if line.startswith(f"Training round {at}/"):
                for victim in victims:
                    workers[victim].kill()

        return log

    with connected(workers, token) as handles:
        torch.manual_seed(0)
        result = Coordinator(
            mlp(),
            handles,
            config=TrainConfig(max_batches=2),
            rounds=6,
            checkpoint_dir=tmp_path / "checkpoint",
            log=killing(["bob"], 3, lines),
        ).run()
        assert [sorted(r["left_out"]) for r in result.history] == [[]] * 2 + [["bob"]] * 4
        assert [r["workers"] for r in result.history[2:]] == [["alice", "charlie"]] * 4
        assert "Worker bob missed round(s) 3, 4, 5, 6; the others ran without it" in lines
        assert any(
            line.startswith("Round 4: worker bob left out (unreachable: cannot reach")
            for line in lines
        )
        written = report.save_metrics(result.history, list(GROUPS.values()), tmp_path)
        rows = (tmp_path / "metrics.csv").read_text().splitlines()
        assert len(rows) == 1 + 2 * 3 + 4 * 3  # header, 3 workers x 2 rounds, 2 + 1 left out x 4
        assert all(p.exists() for p in written)

        too_few = Coordinator(
            mlp(),
            handles,
            config=TrainConfig(max_batches=1),
            rounds=3,
            min_workers=2,
            checkpoint_dir=tmp_path / "second",
            log=killing(["charlie"], 2, []),
        )
        with pytest.raises(FederationError) as caught:
            too_few.run()
    message = str(caught.value)
    assert message.startswith("round 2: 1 of 3 workers answered (alice), fewer than min_workers=2")
    assert "bob: unreachable" in message and "charlie: unreachable" in message
    assert "--resume" in message
    saved = json.loads((tmp_path / "second" / CHECKPOINT_JSON).read_text())
    assert saved["round"] == 1 and saved["history"][0]["workers"] == ["alice", "charlie"]


def test_a_frozen_worker_process_misses_the_round_and_rejoins(processes) -> None:
    """charlie's process is stopped (SIGSTOP) before round 1: it misses that round's timeout,
    is still busy with round 1 when round 2 starts (then continued, SIGCONT), and trains
    again in round 3 over the same connection (and serves the module's later tests)."""
    workers, _, token = processes
    charlie = workers["charlie"].process
    timeout = 2.0
    with connected(workers, token) as handles:
        # one round first, so that no worker's first answer is slow for its imports
        Coordinator(
            mlp(), handles, config=TrainConfig(max_batches=1), rounds=1, log=quiet([])
        ).run()

        def thaw(r: int) -> None:
            if r == 2:
                charlie.send_signal(signal.SIGCONT)
                busy = next(p for p in run.participants if p.name == "charlie").busy
                busy.thread.join(30)
                assert not busy.running()

        run = Coordinator(
            mlp(),
            handles,
            config=TrainConfig(max_batches=1),
            rounds=3,
            round_timeout=timeout,
            log=quiet([]),
            on_round_start=thaw,
        )
        charlie.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            result = run.run()
        finally:
            charlie.send_signal(signal.SIGCONT)
    left = [r["left_out"].get("charlie") for r in result.history]
    assert left == [f"missed the round timeout of {timeout:g} s", "still busy with round 1", None]
    assert [r["workers"] for r in result.history] == [["alice", "bob"]] * 2 + [list(GROUPS)]
    assert time.monotonic() - started >= timeout


def _closed_port_url() -> str:
    """A URL of 127.0.0.1 where nothing listens: a port bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


def test_main_goes_on_without_an_unreachable_worker(processes, tmp_path, capsys) -> None:
    """`tether train` with bob's URL a port where nothing listens: it says so, trains with
    alice's and charlie's processes, tries bob each round; with --min-workers 3 it stops."""
    workers, _, token = processes
    nowhere = _closed_port_url()
    argv = [
        f"--worker=alice={workers['alice'].url}",
        f"--worker=bob={nowhere}",
        f"--worker=charlie={workers['charlie'].url}",
        "--token",
        token,
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
    assert train_cli.main(parse(argv)) == 0
    captured = capsys.readouterr()
    assert f"worker bob at {nowhere} is unreachable (cannot reach a worker at" in captured.err
    assert "Round 2: worker bob left out (unreachable: cannot reach a worker at" in captured.out
    history = json.loads((tmp_path / "ckpt" / CHECKPOINT_JSON).read_text())["history"]
    assert [r["workers"] for r in history] == [["alice", "charlie"]] * 2
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "metrics.csv",
        "metrics.json",
        "accuracy.png",
    }
    assert train_cli.main(parse([*argv, "--min_workers", "3"])) == 1
    assert "2 of 3 workers are reachable, fewer than --min-workers 3" in capsys.readouterr().err


def test_an_answer_that_is_not_the_model_is_refused() -> None:
    state = mlp().state_dict()
    good = {"weights": dict(state), "samples": 32, "losses": [1.0], "seconds": 0.1}
    assert remote._checked(good, state, "alice") is good
    for bad in [
        None,
        {**good, "weights": {k: v[:1] for k, v in state.items()}},
        {**good, "weights": {**state, "extra": torch.ones(1)}},
        {**good, "samples": 0},
        {**good, "samples": "32"},
    ]:
        with pytest.raises(FederationError, match="worker 'eve' answered with something"):
            remote._checked(bad, state, "eve")
