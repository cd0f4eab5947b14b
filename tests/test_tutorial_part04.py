"""PySyft 0.2 tutorial "Part 04 - Federated Learning via Trusted Aggregator" (OpenMined/PySyft,
examples/tutorials/), cell by cell, with `import syft as sy` replaced by `import tether as sy`.
The notebook shows no outputs; the printed losses are read back and must fall, and the averaged
model must fit the toy data better than the one it started from."""

from __future__ import annotations

import re

import torch as _torch


def _pairs(printed: str) -> list[tuple[float, float]]:
    found = re.findall(r"Bob:tensor\(([-\d.e]+)\) Alice:tensor\(([-\d.e]+)\)", printed)
    return [(float(b), float(a)) for b, a in found]


def test_part04_federated_learning_via_trusted_aggregator(capsys) -> None:
    _torch.manual_seed(0)  # not in the notebook: a test runs the same every time

    import copy  # noqa: F401

    import torch
    from torch import nn, optim

    import tether as sy

    hook = sy.TorchHook(torch)

    # Step 1: Create Data Owners
    # create a couple workers

    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")
    secure_worker = sy.VirtualWorker(hook, id="secure_worker")

    # A Toy Dataset
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = torch.tensor([[0], [0], [1], [1.0]], requires_grad=True)

    # get pointers to training data on each worker by
    # sending some training data to bob and alice
    bobs_data = data[0:2].send(bob)
    bobs_target = target[0:2].send(bob)

    alices_data = data[2:].send(alice)
    alices_target = target[2:].send(alice)

    # Step 2: Create Our Model
    # Iniitalize A Toy Model
    model = nn.Linear(2, 1)
    start_loss = ((model(data) - target) ** 2).sum().item()  # not in the notebook

    # Step 3: Send a Copy of the Model to Alice and Bob
    bobs_model = model.copy().send(bob)
    alices_model = model.copy().send(alice)

    bobs_opt = optim.SGD(params=bobs_model.parameters(), lr=0.1)
    alices_opt = optim.SGD(params=alices_model.parameters(), lr=0.1)

    # Step 4: Train Bob's and Alice's Models (in parallel)
    for i in range(10):  # noqa: B007 (as the notebook names it)
        # Train Bob's Model
        bobs_opt.zero_grad()
        bobs_pred = bobs_model(bobs_data)
        bobs_loss = ((bobs_pred - bobs_target) ** 2).sum()
        bobs_loss.backward()

        bobs_opt.step()
        bobs_loss = bobs_loss.get().data

        # Train Alice's Model
        alices_opt.zero_grad()
        alices_pred = alices_model(alices_data)
        alices_loss = ((alices_pred - alices_target) ** 2).sum()
        alices_loss.backward()

        alices_opt.step()
        alices_loss = alices_loss.get().data

        print("Bob:" + str(bobs_loss) + " Alice:" + str(alices_loss))

    local_steps = _pairs(capsys.readouterr().out)
    assert len(local_steps) == 10
    assert local_steps[-1][0] < local_steps[0][0] and local_steps[-1][1] < local_steps[0][1]

    # Step 5: Send Both Updated Models to a Secure Worker
    alices_model.move(secure_worker)

    bobs_model.move(secure_worker)

    assert alices_model.location is secure_worker and bobs_model.location is secure_worker

    # Step 6: Average the Models
    with torch.no_grad():
        model.weight.set_(((alices_model.weight.data + bobs_model.weight.data) / 2).get())
        model.bias.set_(((alices_model.bias.data + bobs_model.bias.data) / 2).get())

    # Rinse and Repeat
    iterations = 10
    worker_iters = 5

    for a_iter in range(iterations):  # noqa: B007 (as the notebook names it)
        bobs_model = model.copy().send(bob)
        alices_model = model.copy().send(alice)

        bobs_opt = optim.SGD(params=bobs_model.parameters(), lr=0.1)
        alices_opt = optim.SGD(params=alices_model.parameters(), lr=0.1)

        for wi in range(worker_iters):  # noqa: B007 (as the notebook names it)
            # Train Bob's Model
            bobs_opt.zero_grad()
            bobs_pred = bobs_model(bobs_data)
            bobs_loss = ((bobs_pred - bobs_target) ** 2).sum()
            bobs_loss.backward()

            bobs_opt.step()
            bobs_loss = bobs_loss.get().data

            # Train Alice's Model
            alices_opt.zero_grad()
            alices_pred = alices_model(alices_data)
            alices_loss = ((alices_pred - alices_target) ** 2).sum()
            alices_loss.backward()

            alices_opt.step()
            alices_loss = alices_loss.get().data

        alices_model.move(secure_worker)
        bobs_model.move(secure_worker)
        with torch.no_grad():
            model.weight.set_(((alices_model.weight.data + bobs_model.weight.data) / 2).get())
            model.bias.set_(((alices_model.bias.data + bobs_model.bias.data) / 2).get())

        print("Bob:" + str(bobs_loss) + " Alice:" + str(alices_loss))

    rounds = _pairs(capsys.readouterr().out)
    assert len(rounds) == iterations
    assert sum(rounds[-1]) < sum(rounds[0])

    preds = model(data)
    loss = ((preds - target) ** 2).sum()

    print(preds)
    print(target)
    print(loss.data)

    # the averaged model fits better than the one it started from (it underfits, as the
    # notebook says, against a model trained on all the data in one place)
    assert loss.item() < start_loss / 2
