"""Split neural networks: gradients cross workers, numbers match the unsplit model, and each
worker sees only what it should."""

from __future__ import annotations

import copy
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import WorkerProcess
from torch import nn, optim
from torch.utils.data import TensorDataset

import tether as sy
from tether import datasets, errors, transforms

ROOT = Path(__file__).resolve().parents[1]


def _segments(sizes: list[int]) -> list[nn.Module]:
    """Linear+ReLU segments over consecutive sizes; the last ends in LogSoftmax."""
    segments = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        segments.append(nn.Sequential(nn.Linear(a, b), nn.LogSoftmax(dim=1) if last else nn.ReLU()))
    return segments


def _recorder(worker) -> list:
    """Everything the worker stores for any client, from now on."""
    seen = []
    stores = worker.node.store

    def store(client: str = "local"):
        found = stores(client)
        if not hasattr(found, "recorded"):
            put = found.put
            found.put = lambda obj_id, stored: (seen.append(stored.value), put(obj_id, stored))[1]
            found.recorded = True
        return found

    worker.node.store = store
    return seen


def _holds(seen: list, tensor: torch.Tensor) -> bool:
    return any(
        isinstance(v, torch.Tensor) and v.shape == tensor.shape and torch.equal(v.detach(), tensor)
        for v in seen
    )


def _assert_split_matches_whole(
    sizes: list[int], places: list, data_at, labels_at, x: torch.Tensor, y: torch.Tensor
) -> None:
    """Train a SplitNN over `places` and the same model whole, 50 steps of SGD on (x, y):
    the same losses at every step and the same weights at the end."""
    torch.manual_seed(0)
    segments = _segments(sizes)
    whole = copy.deepcopy(nn.Sequential(*segments))
    split = sy.SplitNN(segments, places, [optim.SGD(s.parameters(), lr=0.1) for s in segments])
    whole_opt = optim.SGD(whole.parameters(), lr=0.1)
    px, py = x.send(data_at), y.send(labels_at)
    for step in range(50):
        split.zero_grads()
        loss = nn.NLLLoss()(split.forward(px), py)
        split.backward(loss)
        split.step()
        whole_opt.zero_grad()
        expected = nn.NLLLoss()(whole(x), y)
        expected.backward()
        whole_opt.step()
        assert abs(loss.detach().get().item() - expected.item()) <= 1e-5, step
    split.get()
    for mine, theirs in zip(nn.Sequential(*segments).parameters(), whole.parameters(), strict=True):
        assert (mine - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("layout", ["two", "three", "u-shape"])
def test_split_training_matches_the_unsplit_model(make_worker, layout):
    """50 steps on fixed data: same losses and weights as the whole model in plain PyTorch."""
    alice, bob, carol = (make_worker(n) for n in ("alice", "bob", "carol"))
    sizes, places, data_at, labels_at = {
        "two": ([20, 16, 5], [alice, bob], alice, bob),
        "three": ([20, 16, 12, 5], [alice, bob, carol], alice, carol),
        "u-shape": ([20, 16, 12, 5], [alice, bob, alice], alice, alice),
    }[layout]
    x, y = torch.randn(32, sizes[0]), torch.randint(0, sizes[-1], (32,))
    seen = {w: _recorder(w) for w in (alice, bob, carol)}
    _assert_split_matches_whole(sizes, places, data_at, labels_at, x, y)

    # who saw what: the data and labels stayed where they were sent
    for worker in (alice, bob, carol):
        assert _holds(seen[worker], x) == (worker is data_at)
        assert _holds(seen[worker], y) == (worker is labels_at)
    if layout == "u-shape":
        assert seen[bob] and not _holds(seen[bob], x) and not _holds(seen[bob], y)


def test_split_tutorial_accuracy_equals_the_unsplit_model():
    """The tutorial's model and loop (SGD lr 0.03, batch 64, 15 epochs) on the sample."""
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    images, labels = datasets.materialize(datasets.MNIST(train=True, transform=t))
    test_images, test_labels = datasets.materialize(datasets.MNIST(train=False, transform=t))
    images, test_images = images.view(len(images), -1), test_images.view(len(test_images), -1)
    torch.manual_seed(0)
    models = [
        nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 640), nn.ReLU()),
        nn.Sequential(nn.Linear(640, 10), nn.LogSoftmax(dim=1)),
    ]
    whole = copy.deepcopy(nn.Sequential(*models))
    alice, bob = sy.VirtualWorker("alice"), sy.VirtualWorker("bob")
    split = sy.SplitNN(models, [alice, bob], [optim.SGD(m.parameters(), lr=0.03) for m in models])
    whole_opt = optim.SGD(whole.parameters(), lr=0.03)
    for _ in range(15):
        for index in torch.randperm(len(images)).split(64):
            split.zero_grads()
            loss = nn.NLLLoss()(split.forward(images[index].send(alice)), labels[index].send(bob))
            split.backward(loss)
            split.step()
            whole_opt.zero_grad()
            nn.NLLLoss()(whole(images[index]), labels[index]).backward()
            whole_opt.step()
    split.get()
    with torch.no_grad():
        split_acc = (models[1](models[0](test_images)).argmax(1) == test_labels).float().mean()
        whole_acc = (whole(test_images).argmax(1) == test_labels).float().mean()
    print(f"test accuracy: split {100 * split_acc:.2f}%, unsplit {100 * whole_acc:.2f}%")
    assert split_acc > 0.85
    assert abs(split_acc - whole_acc) <= 0.01


def test_segments_that_do_not_chain_are_named(make_worker):
    alice, bob = make_worker("alice"), make_worker("bob")
    segments = [nn.Linear(8, 6), nn.Linear(5, 2)]  # 6 outputs feed 5 inputs
    split = sy.SplitNN(
        segments, [alice, bob], [optim.SGD(s.parameters(), lr=0.1) for s in segments]
    )
    with pytest.raises(errors.RemoteError, match=r"segment 1 \(Linear on 'bob'\).*6 and 5x2"):
        split.forward(torch.randn(3, 8).send(alice))


def test_moving_to_a_worker_that_is_gone_names_it(make_worker):
    alice, bob = make_worker("alice"), make_worker("bob")
    activation = torch.randn(2, 3).send(alice)
    bob.close()
    with pytest.raises(errors.ConnectionLostError, match="'bob' is gone"):
        activation.move(bob, requires_grad=True)


def test_mismatched_split_arguments_are_refused():
    with pytest.raises(ValueError, match="one of each per segment"):
        sy.SplitNN([nn.Linear(2, 2)], [sy.VirtualWorker("a"), sy.VirtualWorker("b")], [])


def _plain_split_example() -> tuple[float, int]:
    """examples/split_mnist.py's first epoch in plain PyTorch, the two segments as one model:
    the same seed, batch order and SGD; its mean training loss and correct test predictions."""
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    # the same samples, transformed once: the loader's shuffle draws the same order from the seed
    train = TensorDataset(*datasets.materialize(datasets.MNIST(None, train=True, transform=t)))
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    torch.manual_seed(0)
    models = [
        nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 640), nn.ReLU()),
        nn.Sequential(nn.Linear(640, 10), nn.LogSoftmax(dim=1)),
    ]
    whole = nn.Sequential(*models)
    optimizer = optim.SGD(whole.parameters(), lr=0.03)
    running = 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = nn.NLLLoss()(whole(images.view(len(images), -1)), labels)
        loss.backward()
        optimizer.step()
        running += loss.item()
    images, labels = datasets.materialize(datasets.MNIST(None, train=False, transform=t))
    with torch.no_grad():
        correct = (whole(images.view(len(images), -1)).argmax(1) == labels).sum().item()
    return running / len(loader), correct


def test_split_example_equals_plain_pytorch():
    """examples/split_mnist.py, one epoch: its training loss and test accuracy are those of
    the same training in plain PyTorch (the example is seeded), and above chance by far."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "split_mnist.py"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    loss = re.search(r"Epoch 0 - Training loss: (\d+\.\d+)", done.stdout)
    result = re.search(r"Test set: Accuracy: (\d+)/10000", done.stdout)
    assert loss and result, done.stdout[-2000:]
    plain_loss, plain_correct = _plain_split_example()
    assert abs(float(loss.group(1)) - plain_loss) <= 1e-4, (loss.group(1), plain_loss)
    assert abs(int(result.group(1)) - plain_correct) <= 5, (result.group(1), plain_correct)
    assert plain_correct > 4000  # 40%: chance is 10% (one epoch lands near 57%)


def test_split_training_on_worker_processes_matches_the_unsplit_model():
    """The same exactness, 2 and 3 segments, with the workers as `tether worker` processes."""
    names = ("alice", "bob", "carol")
    processes = [WorkerProcess("--id", name, "--quiet") for name in names]
    try:
        alice, bob, carol = (p.connect(id=n) for p, n in zip(processes, names, strict=True))
        _assert_split_matches_whole(
            [20, 16, 5], [alice, bob], alice, bob, torch.randn(32, 20), torch.randint(0, 5, (32,))
        )
        _assert_split_matches_whole(
            [20, 16, 12, 5],
            [alice, bob, carol],
            alice,
            carol,
            torch.randn(32, 20),
            torch.randint(0, 5, (32,)),
        )
        for worker in (alice, bob, carol):
            worker.close()
    finally:
        for process in processes:
            process.stop()
