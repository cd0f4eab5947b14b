"""The README's main job and the runnable tutorials, run as a user runs them (subprocesses, real
worker processes on 127.0.0.1, the MNIST sample), in short configurations. Their numbers are
checked against plain PyTorch doing the same work, not only their output's wording."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tether.cli.demo import TUTORIAL_WORKERS, mnist_tensors
from tether.federated import coordinator as coord
from tether.federated.checkpoint import CHECKPOINT_JSON
from tether.federated.data.partition import parse_label_range
from tether.federated.models import Net

ROOT = Path(__file__).resolve().parents[1]
TEST_SAMPLES = 1000  # the evaluator's first 1000 test images: a quick evaluation
SEED, BATCHES, LR = 1, 10, 0.1  # the demo's seed, batches per round and learning rate


def run(argv: list[str], tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a command as a user would (its own process, its own temp folder), with a deadline."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=dict(os.environ, TMPDIR=str(scratch)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def worker_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What alice, bob and charlie hold in the demo: their digits of the sample, in order."""
    data, targets = mnist_tensors(train=True)
    parts = []
    for digits in TUTORIAL_WORKERS.values():
        keep = torch.isin(targets, torch.tensor(parse_label_range(digits))).nonzero().flatten()
        parts.append((data[keep], targets[keep]))
    return parts


def plain_demo(parts, rounds: int, gone: dict[int, set[int]] | None = None) -> dict:
    """The demo's training in plain PyTorch: the CNN seeded as the demo seeds it; each round,
    each worker present takes 10 SGD steps of 32 from the global weights in its batch order,
    then the sample-weighted mean. `gone[r]`: the workers (by index) absent in round r.
    Run with the workers' torch threads: the CNN's sums in another order drift apart by 1e-2
    over 30 steps, while in the same order they agree to the last bit or two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(TUTORIAL_WORKERS)))  # as the demo
    try:
        return _plain_demo(parts, rounds, gone or {})
    finally:
        torch.set_num_threads(threads)


def _plain_demo(parts, rounds: int, gone: dict[int, set[int]]) -> dict:
    torch.manual_seed(SEED)
    state = Net().state_dict()
    for r in range(1, rounds + 1):
        trained, samples = [], []
        for i, (data, targets) in enumerate(parts):
            if i in gone.get(r, set()):
                continue
            model = Net()
            model.load_state_dict(state)
            generator = torch.Generator().manual_seed(coord.round_seed(SEED, r, i))
            order = torch.randperm(len(data), generator=generator)
            optimizer = torch.optim.SGD(model.parameters(), lr=LR)
            for index in order.split(32)[:BATCHES]:
                optimizer.zero_grad()
                F.nll_loss(model(data[index]), targets[index]).backward()
                optimizer.step()
            trained.append(model.state_dict())
            samples.append(BATCHES * 32)
        shares = [n / sum(samples) for n in samples]
        state = {k: _mean([t[k] for t in trained], shares) for k in state}
    return state


def _mean(tensors: list[torch.Tensor], shares: list[float]) -> torch.Tensor:
    """The weighted mean in the order FedAvg sums: `add_` with `alpha` may fuse the multiply
    and add (one rounding, not two) on some CPUs, and over 30 steps the CNN amplifies a last-bit
    difference to 1e-3, so the reference adds the same way."""
    total = tensors[0].mul(shares[0])
    for tensor, share in zip(tensors[1:], shares[1:], strict=True):
        total.add_(tensor, alpha=share)
    return total


def accuracy(state: dict, n: int = TEST_SAMPLES) -> float:
    data, targets = mnist_tensors(train=False)
    model = Net()
    model.load_state_dict(state)
    with torch.no_grad():
        return float((model.eval()(data[:n]).argmax(1) == targets[:n]).float().mean())


def check_demo_output(out: Path, stdout: str, parts, rounds: int, gone=None) -> float:
    """The demo's final weights are plain PyTorch's FedAvg (to float rounding), its reported
    accuracy is what those weights score here, and each worker's model predicts only its own
    digits. Returns the federated model's final accuracy."""
    meta = json.loads((out / "checkpoint" / CHECKPOINT_JSON).read_text())
    assert meta["round"] == rounds
    weights = load_file(out / "checkpoint" / meta["weights"])
    expected = plain_demo(parts, rounds, gone)
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4), key
    history = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in history] == list(range(1, rounds + 1))
    last = history[-1]["eval"]
    federated = last["Federated model"]
    assert federated["samples"] == TEST_SAMPLES
    assert abs(federated["accuracy"] - accuracy(expected)) <= 0.003
    assert f"Federated model: {100 * federated['accuracy']:.2f}%" in stdout
    for name in TUTORIAL_WORKERS:
        update = last.get(f"Model update {name}")
        if update is None:
            continue
        digits = parse_label_range(TUTORIAL_WORKERS[name])
        own = sum(update["predicted"][d] for d in digits)
        assert own / TEST_SAMPLES >= 0.95, (name, update["predicted"])
    return federated["accuracy"]


def test_tether_demo_trains_as_plain_pytorch_fedavg(tmp_path: Path, worker_data) -> None:
    """`tether demo`, 3 rounds: 4 worker processes, the CNN trained across them. The federated
    model reaches over 35% on the test images after 3 rounds (chance: 10%; an untrained or
    badly averaged model stays near it), up from round 1, with every worker in every round."""
    out = tmp_path / "out"
    done = run(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "demo",
            "--rounds",
            "3",
            "--eval_every",
            "2",
            "--test_samples",
            str(TEST_SAMPLES),
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert "3 rounds in" in done.stdout
    final = check_demo_output(out, done.stdout, worker_data, rounds=3)
    history = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [sorted(r["workers"]) for r in history] == [sorted(TUTORIAL_WORKERS)] * 3
    assert ["eval" in r for r in history] == [True, False, True]  # after round 1, 3 (the last)
    first = history[0]["eval"]["Federated model"]["accuracy"]
    assert final > 0.35 and final > first + 0.1, (first, final)
    for name in TUTORIAL_WORKERS:  # each worker's training loss went down
        assert history[-1]["train"][name]["loss"] < history[0]["train"][name]["loss"], name
    assert {p.name for p in out.iterdir()} >= {"metrics.csv", "metrics.json", "accuracy.png"}


def test_websocket_example_goes_on_without_a_killed_worker(tmp_path: Path, worker_data) -> None:
    """examples/websocket_mnist/run.py with bob's process killed during round 2: alice and
    charlie finish the run, and the weights are plain PyTorch's FedAvg without bob from round 2."""
    out = tmp_path / "out"
    done = run(
        [
            sys.executable,
            str(ROOT / "examples" / "websocket_mnist" / "run.py"),
            "--rounds",
            "2",
            "--eval_every",
            "1",
            "--test_samples",
            str(TEST_SAMPLES),
            "--kill",
            "bob@2",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert "(killing worker bob during round 2)" in done.stdout
    history = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["workers"] for r in history] == [["alice", "bob", "charlie"], ["alice", "charlie"]]
    assert list(history[1]["left_out"]) == ["bob"]
    check_demo_output(out, done.stdout, worker_data, rounds=2, gone={2: {1}})


def test_duet_loopback_example_equals_plain_pytorch(tmp_path: Path) -> None:
    """examples/duet_mnist/loopback.py: the scientist trains the tutorial's CNN on the owner's
    data through a Duet (10 batches), and the same training in plain PyTorch, same seed and
    batch order, reaches the same test accuracy; both well above chance (10%). The owner's
    handlers accepted what the tutorial lets out and denied the loss."""
    done = run(
        [
            sys.executable,
            str(ROOT / "examples" / "duet_mnist" / "loopback.py"),
            "--epochs",
            "1",
            "--limit",
            "10",
            "--test-limit",
            "2",
            "--compare-local",
        ],
        tmp_path,
    )
    found = re.search(r"duet (\d+\.\d+)% local (\d+\.\d+)%", done.stdout)
    assert found, done.stdout[-2000:]
    duet, local = float(found.group(1)), float(found.group(2))
    assert duet > 40, duet
    assert abs(duet - local) <= 0.2, (duet, local)  # 0.2 points: 4 of the 2000 test images
    audit = {
        tuple(line.split()[1:2] + line.split()[-1:])
        for line in done.stdout.splitlines()
        if re.match(r"\s*\d+\s+\w+\s", line) and line.split()[-1] in ("accepted", "denied")
    }
    assert audit == {
        ("cuda_is_available", "accepted"),
        ("train_size", "accepted"),
        ("loss", "denied"),
        ("model", "accepted"),
    }
