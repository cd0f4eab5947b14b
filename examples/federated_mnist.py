"""The federated MNIST tutorial (PySyft 0.2.9), with only the imports and data paths changed.

Trains the tutorial's 784-500-10 MLP across two virtual workers, joe and jane, on the MNIST
sample shipped inside tether, then evaluates it on the official 10,000-image test set.

Run: python examples/federated_mnist.py [--epochs 10] [--data PATH] [--seed N]
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from tqdm import tqdm

import tether as sy  # import the syft library
from tether import datasets, transforms

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument(
    "--data", default=None, help="folder with MNIST IDX files (default: the sample inside tether)"
)
parser.add_argument(
    "--seed",
    type=int,
    default=None,
    help="seed torch's generator (the tutorial leaves it unseeded)",
)
args = parser.parse_args()
if args.seed is not None:
    torch.manual_seed(args.seed)

hook = sy.TorchHook(torch)  # attach the pytorch hook
joe = sy.VirtualWorker(hook, id="joe")  # remote worker joe
jane = sy.VirtualWorker(hook, id="jane")  # remote worker jane

transform = transforms.Compose(
    [
        transforms.ToTensor(),
        transforms.Normalize((0.5,), (0.5,)),
    ]
)

train_set = datasets.MNIST(args.data, train=True, download=False, transform=transform)
test_set = datasets.MNIST(args.data, train=False, download=False, transform=transform)

federated_train_loader = sy.FederatedDataLoader(
    train_set.federate((joe, jane)), batch_size=64, shuffle=True
)  # the federate() method splits the data within the workers
test_loader = torch.utils.data.DataLoader(test_set, batch_size=64, shuffle=True)


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(784, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = x.view(-1, 784)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


model = Net()
print(model)

optimizer = optim.SGD(model.parameters(), lr=0.01)

n_epoch = args.epochs
for epoch in tqdm(range(n_epoch), desc="epochs"):
    model.train()
    for batch_idx, (data, target) in enumerate(federated_train_loader):
        model.send(data.location)  # send the model to the client device where the data is present
        optimizer.zero_grad()  # training the model
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        model.get()  # get back the improved model
        if batch_idx % 100 == 0:
            loss = loss.get()  # get back the loss
            tqdm.write(
                f"Training Epoch: {epoch + 1:2d} [{batch_idx * 64:5d}/{len(federated_train_loader) * 64:5d} ({100.0 * batch_idx / len(federated_train_loader):3.0f}%)]\tLoss: {loss.item():.6f}"
            )

model.eval()
test_loss = 0
correct = 0
with torch.no_grad():
    for data, target in test_loader:
        output = model(data)
        test_loss += F.nll_loss(output, target, reduction="sum").item()
        pred = output.argmax(1, keepdim=True)  # get the index of the max log-probability
        correct += pred.eq(target.view_as(pred)).sum().item()

test_loss /= len(test_loader.dataset)

print(
    f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{len(test_loader.dataset)} ({100.0 * correct / len(test_loader.dataset):.0f}%)\n"
)
