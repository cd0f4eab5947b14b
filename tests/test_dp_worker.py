"""The owner's DP enforced by a real `tether worker` process (issue 25's enforcement items): a
coordinator asking for less privacy than the owner's floor is refused; every round's ε is
recorded and printed per worker; a spent budget refuses training and says what was spent;
the spend survives the worker being killed and started again; a client cannot pass rules of
its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import WorkerProcess

from tether.errors import FederationError, NotAllowedError, RemoteError
from tether.federated import FIT
from tether.federated.coordinator import Coordinator
from tether.federated.delegated import modelspec
from tether.federated.delegated.remote import dataset_pointers
from tether.privacy.attacks.models import mlp
from tether.privacy.dp import Steps, epsilon
from tether.remote.client import ref

SAMPLES, BATCH, STEPS = 200, 32, 2  # per round: 2 Poisson batches at rate 32/200
ROUND = Steps(1.0, BATCH / SAMPLES, STEPS)
CONFIG = {"batch_size": BATCH, "max_batches": STEPS, "optimizer_args": {"lr": 0.05}}


def start_worker(ledger: Path, budget: float) -> WorkerProcess:
    return WorkerProcess(
        "--id", "alice", "--samples", str(SAMPLES), "--dp-noise", "1.0", "--dp-clip", "1.0",
        "--max-epsilon", f"{budget!r}", "--delta", "1e-5", "--dp-ledger", str(ledger),
    )  # fmt: skip


def coordinator(worker: WorkerProcess, rounds: int, log: list[str], **config) -> Coordinator:
    torch.manual_seed(0)
    return Coordinator(
        mlp(),
        {"alice": worker.connect(id="coordinator")},
        config={**CONFIG, **config},
        rounds=rounds,
        log=log.append,
    )


def test_the_worker_enforces_its_owners_floor_and_budget_across_a_restart(tmp_path) -> None:
    two, three = (
        epsilon([Steps(1.0, ROUND.rate, 2 * STEPS)], 1e-5),
        epsilon([Steps(1.0, ROUND.rate, 3 * STEPS)], 1e-5),
    )
    budget = (two + three) / 2  # room for two rounds, not three
    ledger = tmp_path / "alice-ledger.json"
    worker = start_worker(ledger, budget)
    try:
        assert any("spent so far: ε = 0 " in line for line in worker.lines), worker.lines

        log: list[str] = []
        less = coordinator(worker, 1, log, dp={"noise": 0.5, "clip": 1.0})
        with pytest.raises(FederationError, match=r"requires DP noise >= 1 and clipping norm"):
            less.run()

        log = []
        history = coordinator(worker, 2, log).run().history
        spent = [record["train"]["alice"] for record in history]
        assert [s["epsilon_total"] for s in spent] == pytest.approx(
            [epsilon([ROUND], 1e-5), two], rel=1e-9
        )
        printed = [line for line in log if "worker alice spent ε" in line]
        assert printed == [
            f"Round {r}: worker alice spent ε = {s['epsilon']:.4g} "
            f"(ε = {s['epsilon_total']:.4g} in total, δ = 1e-05)"
            for r, s in zip((1, 2), spent, strict=True)
        ]

        log = []
        with pytest.raises(FederationError, match=rf"ε = {two:.4g} is spent") as refused:
            coordinator(worker, 1, log).run()
        assert f"allows ε ≤ {budget:g}" in str(refused.value)

        worker.restart()  # killed (SIGKILL) and started again on the same ledger
        assert any(f"spent so far: ε = {two:.4g} " in line for line in worker.lines)
        with pytest.raises(FederationError, match=rf"ε = {two:.4g} is spent"):
            coordinator(worker, 1, [], dp={"noise": 1.0, "clip": 0.5}).run()

        handle = worker.connect(id="sneaky")
        data, targets = dataset_pointers(handle.client, "mnist")
        arguments = [modelspec.describe(mlp()), ref(data), ref(targets), CONFIG]
        sneaky = handle.client.call(FIT, arguments, {"privacy": None}, kind="object")
        with pytest.raises((NotAllowedError, RemoteError), match="set by this node's owner"):
            sneaky.get()
    finally:
        worker.stop()


def test_the_dp_flags_come_together_and_never_with_the_open_policy(capsys) -> None:
    from tether import cli

    assert cli.main(["worker", "--port", "0", "--dp-noise", "1.1"]) == 1
    assert "differential privacy needs --dp-clip, --max-epsilon too" in capsys.readouterr().err
    flags = ["--dp-noise", "1.1", "--dp-clip", "1", "--max-epsilon", "8", "--policy", "open"]
    assert cli.main(["worker", "--port", "0", *flags]) == 1
    assert "a DP budget would protect nothing" in capsys.readouterr().err
    assert cli.main(["worker", "--port", "0", "--dp-ledger", "x.json"]) == 1
    assert "--dp-ledger needs --dp-noise" in capsys.readouterr().err


def test_tether_train_asks_every_worker_for_dp_sgd_never_below_an_owners_floor(
    tmp_path, capsys
) -> None:
    """`tether train --dp-noise Z --dp-clip C`: a worker without rules of its own trains with
    DP-SGD at what was asked, as does one whose owner's floor the ask exceeds (more privacy
    is always allowed); one whose owner's floor is higher refuses (never less); `tether train`
    prints the ε each spent. One flag alone is an error naming both."""
    from tether import VirtualWorker, cli
    from tether.cli import train as train_cli
    from tether.cli.demo import mnist_tensors
    from tether.federated.delegated import enforce_dp
    from tether.privacy.dp import OwnerDP

    data, targets = mnist_tensors(train=True)
    names = ("alice", "bob", "carol")
    workers = {name: VirtualWorker(id=name) for name in names}
    for i, worker in enumerate(workers.values()):
        rows = slice(i * SAMPLES, (i + 1) * SAMPLES)
        worker.publish("mnist", (data[rows], targets[rows]))
    enforce_dp(workers["bob"].node, OwnerDP(noise=0.5, clip=1.0, max_epsilon=50.0))
    enforce_dp(workers["carol"].node, OwnerDP(noise=2.0, clip=0.5, max_epsilon=50.0))
    argv = ["train", *(f"--worker={name}=ws://{name}" for name in names), "--model", "mlp"]
    argv += ["--rounds", "1", "--federate-after-n-batches", str(STEPS), "--batch-size", str(BATCH)]
    argv += ["--checkpoint", str(tmp_path), "--no-progress", "--dp-noise", "1", "--dp-clip", "1"]
    args = cli.build_parser().parse_args(argv)
    assert train_cli.main(args, connect=lambda url, token, id: workers[id]) == 0
    printed = capsys.readouterr().out
    asked = epsilon([ROUND], 1e-5)
    for name in ("alice", "bob"):
        assert f"worker {name} spent ε = {asked:.4g}" in printed, printed
    assert "worker carol left out (refused" in printed, printed
    assert "requires DP noise >= 2 and clipping norm <= 0.5" in printed, printed

    args = cli.build_parser().parse_args(argv[:-2])
    assert train_cli.main(args, connect=lambda url, token, id: workers[id]) == 1
    assert "--dp-noise and --dp-clip go together" in capsys.readouterr().err
