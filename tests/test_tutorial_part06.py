"""PySyft 0.2 tutorial "Part 06 - Federated Learning on MNIST using a CNN" (OpenMined/PySyft,
examples/tutorials/), cell by cell, with `import syft as sy` replaced by `import tether as sy`
and torchvision's `datasets`/`transforms` by tether's, reading the MNIST sample shipped with
tether (5,000 training images, the official 10,000 test images) where the notebook reads
'../data'. The notebook shows the training loss falling and the test accuracy climbing; the
test reads both back from what the tutorial prints, and checks the accuracy against plain
PyTorch doing the same training (same seed, model and batch order) on the pooled data."""

from __future__ import annotations

import re

import pytest

from tether.datasets import mnist

EPOCHS = 2  # 10 in the notebook: two epochs of the 5,000-image sample keep the test short

_TRAIN = re.compile(r"Train Epoch: (\d+) \[(\d+)/(\d+) \((\d+)%\)\]\tLoss: (\d+\.\d+)")
_TEST = re.compile(r"Test set: Average loss: (\d+\.\d+), Accuracy: (\d+)/(\d+) \((\d+)%\)")


def _refuse_download(*args: object, **kwargs: object) -> None:
    pytest.fail("download=True downloaded: the sample's files were not found")


def _read(printed: str) -> tuple[list[tuple[int, int, float]], list[tuple[float, int]]]:
    """(epoch, samples seen, loss) per logged batch and (test loss, correct) per epoch."""
    train = [(int(e), int(seen), float(loss)) for e, seen, _, _, loss in _TRAIN.findall(printed)]
    test = [(float(loss), int(correct)) for loss, correct, _, _ in _TEST.findall(printed)]
    return train, test


def test_part06_federated_learning_on_mnist_using_a_cnn(capsys, monkeypatch) -> None:
    monkeypatch.setattr(mnist, "download_file", _refuse_download)
    data_root = str(mnist.SAMPLE_DIR)  # '../data' in the notebook

    # Imports and model specifications
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim

    import tether as sy  # <-- NEW: import the Pysyft library
    from tether import datasets, transforms  # torchvision's in the notebook

    # <-- NEW: hook PyTorch ie add extra functionalities to support Federated Learning
    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="bob")  # <-- NEW: define remote worker bob
    alice = sy.VirtualWorker(hook, id="alice")  # <-- NEW: and alice

    # We define the setting of the learning task
    class Arguments:
        def __init__(self):
            self.batch_size = 64
            self.test_batch_size = 1000
            self.epochs = EPOCHS  # 10 in the notebook
            self.lr = 0.01
            self.momentum = 0.5
            self.no_cuda = False
            self.seed = 1
            self.log_interval = 30
            self.save_model = False

    args = Arguments()

    use_cuda = not args.no_cuda and torch.cuda.is_available()

    torch.manual_seed(args.seed)

    device = torch.device("cuda" if use_cuda else "cpu")

    kwargs = {"num_workers": 1, "pin_memory": True} if use_cuda else {}

    # Data loading and sending to workers
    federated_train_loader = sy.FederatedDataLoader(  # <-- this is now a FederatedDataLoader
        datasets.MNIST(
            data_root,
            train=True,
            download=True,
            transform=transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
            ),
        ).federate((bob, alice)),  # <-- NEW: we distribute the dataset across all the workers,
        # it's now a FederatedDataset
        batch_size=args.batch_size,
        shuffle=True,
        **kwargs,
    )

    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(
            data_root,
            train=False,
            transform=transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
            ),
        ),
        batch_size=args.test_batch_size,
        shuffle=True,
        **kwargs,
    )

    # CNN specification
    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()  # noqa: UP008 (as the notebook writes it)
            self.conv1 = nn.Conv2d(1, 20, 5, 1)
            self.conv2 = nn.Conv2d(20, 50, 5, 1)
            self.fc1 = nn.Linear(4 * 4 * 50, 500)
            self.fc2 = nn.Linear(500, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(x, 2, 2)
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2, 2)
            x = x.view(-1, 4 * 4 * 50)
            x = F.relu(self.fc1(x))
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    # Define the train and test functions
    def train(args, model, device, federated_train_loader, optimizer, epoch):
        model.train()
        for batch_idx, (data, target) in enumerate(federated_train_loader):  # <-- distributed
            model.send(data.location)  # <-- NEW: send the model to the right location
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            model.get()  # <-- NEW: get the model back
            if batch_idx % args.log_interval == 0:
                loss = loss.get()  # <-- NEW: get the loss back
                print(
                    "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(  # noqa: UP032
                        epoch,
                        batch_idx * args.batch_size,
                        len(federated_train_loader) * args.batch_size,
                        100.0 * batch_idx / len(federated_train_loader),
                        loss.item(),
                    )
                )

    # The test function does not change!
    def test(args, model, device, test_loader):
        model.eval()
        test_loss = 0
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                data, target = data.to(device), target.to(device)
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction="sum").item()  # sum up batch
                pred = output.argmax(1, keepdim=True)  # get the index of the max log-probability
                correct += pred.eq(target.view_as(pred)).sum().item()

        test_loss /= len(test_loader.dataset)

        print(
            "\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(  # noqa: UP032
                test_loss,
                correct,
                len(test_loader.dataset),
                100.0 * correct / len(test_loader.dataset),
            )
        )

    # Launch the training !
    model = Net().to(device)
    optimizer = optim.SGD(model.parameters(), lr=args.lr)  # TODO momentum is not supported

    for epoch in range(1, args.epochs + 1):
        train(args, model, device, federated_train_loader, optimizer, epoch)
        test(args, model, device, test_loader)

    if args.save_model:
        torch.save(model.state_dict(), "mnist_cnn.pt")

    federated_train, federated_test = _read(capsys.readouterr().out)

    # Not in the notebook: the same training in plain PyTorch on the pooled data. Same seed,
    # so the same initial model; the same batches in the same order (bob's half, then alice's,
    # each shuffled by a generator seeded from torch's global random stream, as
    # FederatedDataLoader does); the same `test` with its shuffled loader in between.
    pooled_data, pooled_targets = datasets.materialize(
        datasets.MNIST(
            data_root,
            train=True,
            transform=transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
            ),
        )
    )

    def plain_train(args, model, device, optimizer, epoch):
        model.train()
        batches = []
        for part in torch.arange(len(pooled_data)).tensor_split(2):  # bob's half, alice's
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            order = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))
            batches += part[order].split(args.batch_size)
        for batch_idx, index in enumerate(batches):
            data, target = pooled_data[index].to(device), pooled_targets[index].to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            if batch_idx % args.log_interval == 0:
                print(
                    f"Train Epoch: {epoch} [{batch_idx * args.batch_size}/"
                    f"{len(batches) * args.batch_size} ({100.0 * batch_idx / len(batches):.0f}%)]"
                    f"\tLoss: {loss.item():.6f}"
                )

    torch.manual_seed(args.seed)
    twin = Net().to(device)
    twin_optimizer = optim.SGD(twin.parameters(), lr=args.lr)
    for epoch in range(1, args.epochs + 1):
        plain_train(args, twin, device, twin_optimizer, epoch)
        test(args, twin, device, test_loader)

    plain_train_log, plain_test = _read(capsys.readouterr().out)
    print(f"federated: {federated_train} {federated_test}")
    print(f"plain PyTorch, pooled: {plain_train_log} {plain_test}")

    # What the notebook shows: every epoch logs batches 0, 30 and 60 of 80 (5,120 samples in
    # batches of 64), the loss falls from about ln(10) = 2.30, the test accuracy climbs.
    assert [seen for _, seen, _ in federated_train] == [0, 1920, 3840] * args.epochs
    assert [seen for _, seen, _ in plain_train_log] == [0, 1920, 3840] * args.epochs
    first_loss, last_loss = federated_train[0][2], federated_train[-1][2]
    assert first_loss > 2.1 and last_loss < first_loss - 1.0, federated_train
    assert len(federated_test) == args.epochs
    assert federated_test[-1][0] < federated_test[0][0]
    assert federated_test[-1][1] > federated_test[0][1]
    assert federated_test[-1][1] > 7000, federated_test  # seed 1: 61.8%, then 74.4%
    # On in-process workers, federated training is the same SGD as the baseline's: same
    # model, same batches in the same order, so the same logged losses ...
    assert [loss for *_, loss in plain_train_log] == pytest.approx(
        [loss for *_, loss in federated_train], rel=1e-3
    )
    # ... and the same test accuracy within a point, on the official test set.
    assert abs(federated_test[-1][1] - plain_test[-1][1]) <= 100, (federated_test, plain_test)
