"""PySyft 0.2 tutorial "Part 07 - Federated Learning with Federated Dataset" (OpenMined/PySyft,
examples/tutorials/), cell by cell, with `import syft as sy` replaced by `import tether as sy`.
The sandbox's Boston house prices ship with tether (nothing is downloaded). The notebook
prints each epoch's total loss; the test reads them back from what it prints, checks that they
fall, and that they are the losses plain PyTorch gets doing the same training (same model,
batches in the same order, one Adam per worker) on the same data."""

from __future__ import annotations

import re

import torch
from torch import nn

from tether.datasets.boston import load_boston

EPOCHS = 5  # 50 in the notebook: five epochs show the fall and keep the test short

_TOTAL = re.compile(r"^Total loss (\S+)$", re.MULTILINE)
_BATCH = re.compile(r"Train Epoch: (\d+) \[(\d+)/(\d+) \((\d+)%\)\]\tBatch loss: (\d+\.\d+)")


def test_part07_federated_learning_with_federated_dataset(capsys) -> None:
    epochs = EPOCHS  # the notebook's parameters cell: epochs = 50
    torch.manual_seed(0)  # not in the notebook: some initial weights' loss rises in an epoch

    # We use the sandbox that we discovered last lesson
    import torch as th

    import tether as sy

    sy.create_sandbox(globals(), verbose=False)

    # Then search for a dataset
    boston_data = grid.search("#boston", "#data")  # noqa: F821 (the sandbox's global)
    boston_target = grid.search("#boston", "#target")  # noqa: F821 (the sandbox's global)

    # We load a model and an optimizer
    n_features = boston_data["alice"][0].shape[1]
    n_targets = 1

    model = th.nn.Linear(n_features, n_targets)
    initial = {k: v.clone() for k, v in model.state_dict().items()}  # not in the notebook

    # Here we cast the data fetched in a `FederatedDataset`. See the workers which hold part
    # of the data.

    # Cast the result in BaseDatasets
    datasets = []
    for worker in boston_data.keys():  # noqa: SIM118 (as the notebook writes it)
        dataset = sy.BaseDataset(boston_data[worker][0], boston_target[worker][0])
        datasets.append(dataset)

    # Build the FederatedDataset object
    dataset = sy.FederatedDataset(datasets)
    print(dataset.workers)
    optimizers = {}
    for worker in dataset.workers:
        optimizers[worker] = th.optim.Adam(params=model.parameters(), lr=1e-2)

    # We put it in a `FederatedDataLoader` and specify options
    train_loader = sy.FederatedDataLoader(dataset, batch_size=32, shuffle=False, drop_last=False)

    # And finally we iterate over epochs. You can see how similar this is compared to pure and
    # local PyTorch training!
    for epoch in range(1, epochs + 1):
        loss_accum = 0
        for batch_idx, (data, target) in enumerate(train_loader):
            model.send(data.location)

            optimizer = optimizers[data.location.id]
            optimizer.zero_grad()
            pred = model(data)
            loss = ((pred.view(-1) - target) ** 2).mean()
            loss.backward()
            optimizer.step()

            model.get()
            loss = loss.get()

            loss_accum += float(loss)

            if batch_idx % 8 == 0:
                print(
                    "Train Epoch: {} [{}/{} ({:.0f}%)]\tBatch loss: {:.6f}".format(  # noqa: UP032
                        epoch,
                        batch_idx,
                        len(train_loader),
                        100.0 * batch_idx / len(train_loader),
                        loss.item(),
                    )
                )

        print("Total loss", loss_accum)

    printed = capsys.readouterr().out
    totals = [float(t) for t in _TOTAL.findall(printed)]

    # What the notebook shows: the six sandbox workers, and a loss that falls.
    assert printed.splitlines()[:3] == [
        "Setting up Sandbox...",
        "Done!",
        "['bob', 'theo', 'jason', 'alice', 'andy', 'jon']",
    ]
    assert len(totals) == EPOCHS and len(_BATCH.findall(printed)) == 3 * EPOCHS
    assert totals[-1] < totals[0] / 2 and totals == sorted(totals, reverse=True)

    # Not in the notebook: the same training in plain PyTorch. The sandbox gave each worker an
    # equal, ordered part of the data (the last one the rest); the loader takes each worker's
    # batches in turn, in order; each worker has its own Adam.
    data, target = (t.float() for t in load_boston())
    parts = [(0, 84), (84, 168), (168, 252), (252, 336), (336, 420), (420, 506)]
    plain = nn.Linear(13, 1)
    plain.load_state_dict(initial)
    adams = [torch.optim.Adam(plain.parameters(), lr=1e-2) for _ in parts]
    plain_totals = []
    for _ in range(EPOCHS):
        total = 0.0
        for (start, end), adam in zip(parts, adams, strict=True):
            for batch in range(start, end, 32):
                x, y = data[batch : min(batch + 32, end)], target[batch : min(batch + 32, end)]
                adam.zero_grad()
                batch_loss = ((plain(x).view(-1) - y) ** 2).mean()
                batch_loss.backward()
                adam.step()
                total += float(batch_loss)
        plain_totals.append(total)
    assert totals == plain_totals
    assert torch.equal(model.weight, plain.weight) and torch.equal(model.bias, plain.bias)
