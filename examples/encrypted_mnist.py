"""The PySyft tutorial "Part 12 bis - Encrypted Training on MNIST", with only the imports
changed (`import tether as sy`, tether's `datasets` and `transforms` for torchvision's) and the
MNIST sample inside tether read where the notebook reads '../data'. The model and the data
are secret-shared between two workers; a crypto provider deals the triples. The notebook
reaches 89% after 10 epochs on 640 images (see docs/smpc.md for the run here).

Run: python examples/encrypted_mnist.py [--epochs 10]
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

import tether as sy  # import the Pysyft library
from tether import datasets, transforms  # torchvision's in the notebook

cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
cli.add_argument("--epochs", type=int, default=10)
DATA = None  # '../data' in the notebook: None reads the MNIST sample inside tether


class Arguments:
    def __init__(self):
        self.batch_size = 64
        self.test_batch_size = 64
        self.epochs = cli.parse_args().epochs  # 10 in the notebook
        self.lr = 0.02
        self.seed = 1
        self.log_interval = 1  # Log info at each batch
        self.precision_fractional = 3


args = Arguments()

_ = torch.manual_seed(args.seed)

hook = sy.TorchHook(
    torch
)  # hook PyTorch to add extra functionalities like Federated and Encrypted Learning


# simulation functions
def connect_to_workers(n_workers):
    return [sy.VirtualWorker(hook, id=f"worker{i + 1}") for i in range(n_workers)]


def connect_to_crypto_provider():
    return sy.VirtualWorker(hook, id="crypto_provider")


workers = connect_to_workers(n_workers=2)
crypto_provider = connect_to_crypto_provider()

# We don't use the whole dataset for efficiency purpose, but feel free to increase these numbers
n_train_items = 640
n_test_items = 640


def get_private_data_loaders(precision_fractional, workers, crypto_provider):
    def one_hot_of(index_tensor):
        """
        Transform to one hot tensor

        Example:
            [0, 3, 9]
            =>
            [[1., 0., 0., 0., 0., 0., 0., 0., 0., 0.],
             [0., 0., 0., 1., 0., 0., 0., 0., 0., 0.],
             [0., 0., 0., 0., 0., 0., 0., 0., 0., 1.]]

        """
        onehot_tensor = torch.zeros(*index_tensor.shape, 10)  # 10 classes for MNIST
        onehot_tensor = onehot_tensor.scatter(1, index_tensor.view(-1, 1), 1)
        return onehot_tensor

    def secret_share(tensor):
        """
        Transform to fixed precision and secret share a tensor
        """
        return tensor.fix_precision(precision_fractional=precision_fractional).share(
            *workers, crypto_provider=crypto_provider, requires_grad=True
        )

    transformation = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )

    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(DATA, train=True, download=True, transform=transformation),
        batch_size=args.batch_size,
    )

    private_train_loader = [
        (secret_share(data), secret_share(one_hot_of(target)))
        for i, (data, target) in enumerate(train_loader)
        if i < n_train_items / args.batch_size
    ]

    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(DATA, train=True, download=True, transform=transformation),
        batch_size=args.test_batch_size,
    )

    private_test_loader = [
        (secret_share(data), secret_share(target.float()))
        for i, (data, target) in enumerate(test_loader)
        if i < n_test_items / args.test_batch_size
    ]

    return private_train_loader, private_test_loader


private_train_loader, private_test_loader = get_private_data_loaders(
    precision_fractional=args.precision_fractional, workers=workers, crypto_provider=crypto_provider
)


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def train(args, model, private_train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(
        private_train_loader
    ):  # <-- now it is a private dataset
        start_time = time.time()

        optimizer.zero_grad()

        output = model(data)

        # loss = F.nll_loss(output, target)  <-- not possible here
        batch_size = output.shape[0]
        loss = ((output - target) ** 2).sum().refresh() / batch_size

        loss.backward()

        optimizer.step()

        if batch_idx % args.log_interval == 0:
            loss = loss.get().float_precision()
            print(
                "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}\tTime: {:.3f}s".format(
                    epoch,
                    batch_idx * args.batch_size,
                    len(private_train_loader) * args.batch_size,
                    100.0 * batch_idx / len(private_train_loader),
                    loss.item(),
                    time.time() - start_time,
                )
            )


def test(args, model, private_test_loader):
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in private_test_loader:
            output = model(data)
            pred = output.argmax(dim=1)
            correct += pred.eq(target.view_as(pred)).sum()

    correct = correct.get().float_precision()
    print(
        "\nTest set: Accuracy: {}/{} ({:.0f}%)\n".format(
            correct.item(),
            len(private_test_loader) * args.test_batch_size,
            100.0 * correct.item() / (len(private_test_loader) * args.test_batch_size),
        )
    )


model = Net()
model = model.fix_precision().share(*workers, crypto_provider=crypto_provider, requires_grad=True)

optimizer = optim.SGD(model.parameters(), lr=args.lr)
optimizer = optimizer.fix_precision()

for epoch in range(1, args.epochs + 1):
    train(args, model, private_train_loader, optimizer, epoch)
    test(args, model, private_test_loader)
