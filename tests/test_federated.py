"""Federated datasets and loaders: data placed privately on workers, batches cut remotely,
and training through them as good as plain PyTorch on the pooled data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import TensorDataset

import tether as sy
from tether import datasets, errors, transforms

ROOT = Path(__file__).resolve().parents[1]


def _mnist(train: bool) -> datasets.MNIST:
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    return datasets.MNIST(None, train=train, transform=t)


def test_federate_places_private_parts_on_the_workers(make_worker):
    joe, jane = make_worker("joe"), make_worker("jane")
    data, labels = torch.randn(10, 3), torch.arange(10) % 3
    fed = TensorDataset(data, labels).federate((joe, jane))  # any torch Dataset, via the hook
    assert fed.workers == ["joe", "jane"] and len(fed) == 10
    assert fed["joe"].location is joe and fed["jane"].size == 5
    assert fed["joe"].data.shape == (5, 3)
    with pytest.raises(errors.PermissionDeniedError, match="private"):
        fed["joe"].data.get()
    # computing on it is allowed, and gives what the same computation gives locally
    assert torch.allclose(fed["jane"].data.sum(dim=0).get(), data[5:].sum(dim=0))
    assert "joe" in fed.label_table and "jane" in fed.label_table


def test_federate_with_a_partitioner(make_worker):
    workers = [make_worker(n) for n in ("alice", "bob", "charlie")]
    fed = sy.federate(datasets.MNIST(), workers, partition="labels:0-3/4-6/7-9")
    assert [p.size for p in fed.datasets.values()] == [2000, 1500, 1500]
    labels = fed["bob"].targets.unique()
    assert torch.equal(labels.get(), torch.tensor([4, 5, 6]))


@pytest.mark.parametrize(
    "workers, message", [(0, "at least one worker"), (11, "10 samples across 11 workers")]
)
def test_federate_refuses_impossible_splits(workers, message):
    dataset = TensorDataset(torch.randn(10, 2), torch.zeros(10))
    with pytest.raises(ValueError, match=message):
        sy.federate(dataset, [sy.VirtualWorker(f"w{i}") for i in range(workers)])


def test_loader_cuts_a_workers_batches_in_one_command_per_tensor(make_worker):
    joe, jane = make_worker("joe"), make_worker("jane")
    data, labels = torch.arange(20.0).view(10, 2), torch.arange(10)
    loader = sy.FederatedDataLoader(TensorDataset(data, labels).federate((joe, jane)), batch_size=2)
    assert len(loader) == 6  # 5 samples each: 3 batches each
    sent = []
    for worker in (joe, jane):
        submit = worker.client.submit
        worker.client.submit = lambda cmd, _submit=submit, **kw: (
            sent.append(cmd),
            _submit(cmd, **kw),
        )[1]
    # a batch is a view of private data and stays private: read it through a computed copy
    seen = [(d.location.id, (d * 1).get(), (t * 1).get()) for d, t in loader]
    assert [w for w, _, _ in seen] == ["joe"] * 3 + ["jane"] * 3
    assert torch.equal(torch.cat([d for _, d, _ in seen]), data)
    assert torch.equal(torch.cat([t for _, _, t in seen]), labels)
    cuts = [c for c in sent if getattr(c, "op", "") == "torch.Tensor.split"]
    assert len(cuts) == 2 * 2 and all(len(c.out) == 3 for c in cuts)  # per worker and tensor
    with pytest.raises(errors.PermissionDeniedError):
        next(iter(loader))[0].get()  # a batch of raw samples does not leave


def test_shuffled_loader_is_a_permutation_per_worker(bob):
    data = torch.arange(12.0)
    fed = TensorDataset(data, data).federate([bob])
    gen = torch.Generator().manual_seed(1)
    loader = sy.FederatedDataLoader(fed, batch_size=5, shuffle=True, generator=gen)
    sent = []
    submit = bob.client.submit
    bob.client.submit = lambda cmd, **kw: (sent.append(cmd), submit(cmd, **kw))[1]
    batches = [(d * 1, t * 1) for d, t in loader]
    ops = [getattr(c, "op", "") for c in sent]
    # the epoch's order applied once to each tensor, then each is cut into its batches once
    assert ops.count("operator.getitem") == 2 and ops.count("torch.Tensor.split") == 2
    order = torch.cat([d.get() for d, _ in batches])
    assert sorted(order.tolist()) == data.tolist() and not torch.equal(order, data)
    assert torch.equal(torch.cat([t.get() for _, t in batches]), order)
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(order, data[expected])  # the order drawn here, applied there
    dropped = sy.FederatedDataLoader(fed, batch_size=5, drop_last=True)
    assert len(dropped) == 2 and [len(t) for _, t in dropped] == [5, 5]


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1)
    )


def _accuracy(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor]) -> float:
    data, targets = test
    with torch.no_grad():
        return (model(data).argmax(1) == targets).float().mean().item() * 100


def _federated_run(train: datasets.MNIST, model: nn.Module) -> None:
    """The tutorial's loop: SGD lr 0.01, batch 64, 10 epochs, across two virtual workers."""
    joe, jane = sy.VirtualWorker("joe"), sy.VirtualWorker("jane")
    loader = sy.FederatedDataLoader(train.federate((joe, jane)), batch_size=64, shuffle=True)
    opt = optim.SGD(model.parameters(), lr=0.01)
    for _ in range(10):
        for data, target in loader:
            model.send(data.location)
            opt.zero_grad()
            F.nll_loss(model(data), target).backward()
            opt.step()
            model.get()


def _pooled_run(pooled: tuple[torch.Tensor, torch.Tensor], model: nn.Module) -> None:
    """The same settings in plain PyTorch on all the data, shuffled each epoch."""
    data, targets = pooled
    opt = optim.SGD(model.parameters(), lr=0.01)
    for _ in range(10):
        for index in torch.randperm(len(data)).split(64):
            opt.zero_grad()
            F.nll_loss(model(data[index]), targets[index]).backward()
            opt.step()


@pytest.mark.timeout(600)  # 5 seeds x 10 epochs twice: about 40 s on a quiet 2-core machine
def test_federated_tutorial_accuracy_matches_plain_pytorch_on_pooled_data():
    """Mean test accuracy over five seeds, federated vs pooled: one run's accuracy moves by
    about a point with the batch order alone at these settings, so single runs prove nothing."""
    train = _mnist(train=True)
    pooled, test = datasets.materialize(train), datasets.materialize(_mnist(train=False))
    federated, plain = [], []
    for seed in range(5):
        torch.manual_seed(seed)
        model, twin = _net(), _net()
        twin.load_state_dict(model.state_dict())
        _federated_run(train, model)
        _pooled_run(pooled, twin)
        federated.append(_accuracy(model, test))
        plain.append(_accuracy(twin, test))
    mean_federated, mean_plain = sum(federated) / 5, sum(plain) / 5
    print(
        f"test accuracy over 5 seeds: federated {mean_federated:.2f}% {federated}, "
        f"plain PyTorch pooled {mean_plain:.2f}% {plain}"
    )
    assert mean_federated > 80
    assert abs(mean_federated - mean_plain) <= 1.0


def test_federated_example_learns():
    """examples/federated_mnist.py, one epoch across joe and jane: the test loss falls well
    below the untrained model's ln(10) = 2.30, and the accuracy is far above chance (10%).
    Seeded (the tutorial is not: unseeded, one epoch lands anywhere from 32% to 75%), so the
    bounds hold on every run; seed 0 gives 67%, test loss 1.47."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "federated_mnist.py"),
            "--epochs",
            "1",
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    first = re.search(r"Training Epoch:  1 \[    0/ 5120 \(  0%\)\]\tLoss: (\d+\.\d+)", done.stdout)
    result = re.search(r"Test set: Average loss: (\d+\.\d+), Accuracy: (\d+)/10000", done.stdout)
    assert first and result, done.stdout[-2000:]
    start, loss, correct = float(first.group(1)), float(result.group(1)), int(result.group(2))
    assert start > 2.1  # the untrained model's loss on its first batch, about ln(10)
    assert loss < 1.9 and loss < start - 0.4, (start, loss)
    assert correct > 5000, correct
