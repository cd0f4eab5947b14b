"""Training through tether gives the numbers plain PyTorch gives for the same steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn, optim

from tether.datasets import MNIST
from tether.federated.floptimizer import Optims

TOLERANCE = 1e-6


def _toy_data():
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = torch.tensor([[0], [0], [1], [1.0]], requires_grad=True)
    return data, target


def test_intro_tutorial_loop_matches_plain_pytorch(make_worker):
    """The tutorial's federated loop (Adam per worker via Optims) vs the same steps locally."""
    bob, alice = make_worker("bob"), make_worker("alice")
    data, target = _toy_data()
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    twin = nn.Linear(2, 1)
    twin.load_state_dict(model.state_dict())

    datasets = [
        (data[0:2].send(bob), target[0:2].send(bob)),
        (data[2:].send(alice), target[2:].send(alice)),
    ]
    optims = Optims(["bob", "alice"], optim=optim.Adam(params=model.parameters(), lr=0.1))
    losses = []
    for _ in range(10):
        for d, t in datasets:
            model.send(d.location)
            opt = optims.get_optim(d.location.id)
            opt.zero_grad()
            loss = ((model(d) - t) ** 2).sum()
            loss.backward()
            opt.step()
            model.get()
            losses.append(loss.get())

    local = [(data[0:2], target[0:2]), (data[2:], target[2:])]
    twin_opts = [optim.Adam(twin.parameters(), lr=0.1) for _ in local]
    expected = []
    for _ in range(10):
        for (d, t), opt in zip(local, twin_opts, strict=True):
            opt.zero_grad()
            loss = ((twin(d) - t) ** 2).sum()
            loss.backward()
            opt.step()
            expected.append(loss.detach())

    assert max(abs(a.item() - b.item()) for a, b in zip(losses, expected, strict=True)) <= TOLERANCE
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert (mine - theirs).abs().max().item() <= TOLERANCE
    assert expected[-1] < expected[0]  # it did learn


def test_mlp_epoch_on_mnist_through_pointers_matches_plain_pytorch(make_worker):
    """784-500-10 MLP, one epoch on the 5,000-image sample, batch 64, sent and fetched per batch."""
    bob = make_worker("bob")
    train = MNIST(train=True)
    images = (train.data.float() / 255 - 0.5) / 0.5
    batches = list(zip(images.split(64), train.targets.split(64), strict=True))

    def net() -> nn.Module:
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1)
        )

    torch.manual_seed(0)
    model, twin = net(), net()
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = optim.SGD(model.parameters(), lr=0.01), optim.SGD(twin.parameters(), lr=0.01)

    losses, expected = [], []
    for data, target in batches:
        data_ptr, target_ptr = data.send(bob), target.send(bob)
        model.send(data_ptr.location)
        opt.zero_grad()
        loss = F.nll_loss(model(data_ptr), target_ptr)
        loss.backward()
        opt.step()
        model.get()
        losses.append(loss.get().item())

        twin_opt.zero_grad()
        twin_loss = F.nll_loss(twin(data), target)
        twin_loss.backward()
        twin_opt.step()
        expected.append(twin_loss.item())

    assert len(losses) == 79
    assert max(abs(a - b) for a, b in zip(losses, expected, strict=True)) <= TOLERANCE
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert (mine - theirs).abs().max().item() <= TOLERANCE
    assert sum(expected[-10:]) < sum(expected[:10])  # it did learn
