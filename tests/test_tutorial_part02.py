"""PySyft 0.2 tutorial "Part 02 - Intro to Federated Learning" (OpenMined/PySyft,
examples/tutorials/), cell by cell, with `import syft as sy` replaced by `import tether as sy`
(and `syft.federated.floptimizer` by `tether.federated.floptimizer`). The notebook prints the
loss each step and shows no outputs; the printed losses are read back and must fall."""

from __future__ import annotations

import re

import torch as _torch


def _losses(printed: str) -> list[float]:
    return [float(v) for v in re.findall(r"tensor\(([-\d.e]+)", printed)]


def test_part02_intro_to_federated_learning(capsys) -> None:
    _torch.manual_seed(0)  # not in the notebook: a test runs the same every time

    import torch
    from torch import nn, optim

    # A Toy Dataset
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]])
    target = torch.tensor([[0], [0], [1], [1.0]])

    # A Toy Model
    model = nn.Linear(2, 1)

    def train():
        # Training Logic
        opt = optim.SGD(params=model.parameters(), lr=0.1)
        for iter in range(20):  # noqa: B007 (as the notebook names it)
            # 1) erase previous gradients (if they exist)
            opt.zero_grad()

            # 2) make a prediction
            pred = model(data)

            # 3) calculate how much we missed
            loss = ((pred - target) ** 2).sum()

            # 4) figure out which weights caused us to miss
            loss.backward()

            # 5) change those weights
            opt.step()

            # 6) print our progress
            print(loss.data)

    train()
    central = _losses(capsys.readouterr().out)
    assert len(central) == 20 and central[-1] < central[0] / 4

    import tether as sy

    hook = sy.TorchHook(torch)

    # create a couple workers

    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")

    # A Toy Dataset
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = torch.tensor([[0], [0], [1], [1.0]], requires_grad=True)

    # get pointers to training data on each worker by
    # sending some training data to bob and alice
    data_bob = data[0:2]
    target_bob = target[0:2]

    data_alice = data[2:]
    target_alice = target[2:]

    # Iniitalize A Toy Model
    model = nn.Linear(2, 1)

    data_bob = data_bob.send(bob)
    data_alice = data_alice.send(alice)
    target_bob = target_bob.send(bob)
    target_alice = target_alice.send(alice)

    # organize pointers into a list
    datasets = [(data_bob, target_bob), (data_alice, target_alice)]

    from tether.federated.floptimizer import Optims

    workers = ["bob", "alice"]
    optims = Optims(workers, optim=optim.Adam(params=model.parameters(), lr=0.1))

    def train():  # the notebook defines it again
        # Training Logic
        for iter in range(10):  # noqa: B007 (as the notebook names it)
            # NEW) iterate through each worker's dataset
            for data, target in datasets:
                # NEW) send model to correct worker
                model.send(data.location)

                # Call the optimizer for the worker using get_optim
                opt = optims.get_optim(data.location.id)
                # print(data.location.id)

                # 1) erase previous gradients (if they exist)
                opt.zero_grad()

                # 2) make a prediction
                pred = model(data)

                # 3) calculate how much we missed
                loss = ((pred - target) ** 2).sum()

                # 4) figure out which weights caused us to miss
                loss.backward()

                # 5) change those weights
                opt.step()

                # NEW) get model (with gradients)
                model.get()

                # 6) print our progress
                print(loss.get().data)  # NEW) slight edit... need to call .get() on loss\

    # federated averaging

    train()
    federated = _losses(capsys.readouterr().out)
    assert len(federated) == 20
    rounds = [b + a for b, a in zip(federated[0::2], federated[1::2], strict=True)]
    assert rounds[-1] < rounds[0] / 4  # bob's and alice's losses together fall
