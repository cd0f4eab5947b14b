"""The split neural network tutorial (PySyft), with only the imports and data paths changed.

Alice holds the images and the first segment (784-128-640), bob the labels and the second
(640-10). Trains on the MNIST sample inside tether, then tests on the official test set.

Run: python examples/split_mnist.py [--epochs 15] [--data PATH]
"""

import argparse

import torch
from torch import nn, optim

import tether as sy
from tether import datasets, transforms

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument(
    "--data", default=None, help="folder with MNIST IDX files (default: the sample inside tether)"
)
cli = parser.parse_args()

epochs = cli.epochs

hook = sy.TorchHook(torch)

# Data preprocessing
transform = transforms.Compose(
    [
        transforms.ToTensor(),
        transforms.Normalize((0.5,), (0.5,)),
    ]
)
trainset = datasets.MNIST(cli.data, download=False, train=True, transform=transform)
trainloader = torch.utils.data.DataLoader(trainset, batch_size=64, shuffle=True)

torch.manual_seed(0)

# Define our model segments

input_size = 784
hidden_sizes = [128, 640]
output_size = 10

models = [
    nn.Sequential(
        nn.Linear(input_size, hidden_sizes[0]),
        nn.ReLU(),
        nn.Linear(hidden_sizes[0], hidden_sizes[1]),
        nn.ReLU(),
    ),
    nn.Sequential(nn.Linear(hidden_sizes[1], output_size), nn.LogSoftmax(dim=1)),
]

# Create optimisers for each segment and link to their segment
optimizers = [
    optim.SGD(
        model.parameters(),
        lr=0.03,
    )
    for model in models
]

# create some workers
alice = sy.VirtualWorker(hook, id="alice")
bob = sy.VirtualWorker(hook, id="bob")
workers = alice, bob

# Send Model Segments to starting locations
model_locations = [alice, bob]

for model, location in zip(models, model_locations):
    model.send(location)


def train(x, target, models, optimizers):
    # Training Logic

    # 1) erase previous gradients (if they exist)
    for opt in optimizers:
        opt.zero_grad()

    # 2) make a prediction
    a = models[0](x)

    # 3) break the computation graph link, and send the activation signal to the next model
    remote_a = a.move(models[1].location, requires_grad=True)

    # 4) make prediction on next model using recieved signal
    pred = models[1](remote_a)

    # 5) calculate how much we missed
    criterion = nn.NLLLoss()
    loss = criterion(pred, target)

    # 6) figure out which weights caused us to miss
    loss.backward()

    # 7) send gradient of the recieved activation signal to the model behind
    # grad_a = remote_a.grad.copy().move(models[0].location)

    # 8) backpropagate on bottom model given this gradient
    # a.backward(grad_a)

    # 9) change the weights
    for opt in optimizers:
        opt.step()

    # 10) print our progress
    return loss.detach().get()


for i in range(epochs):
    running_loss = 0
    for images, labels in trainloader:
        images = images.send(alice)
        images = images.view(images.shape[0], -1)
        labels = labels.send(bob)

        loss = train(images, labels, models, optimizers)
        running_loss += loss

    else:
        print("Epoch {} - Training loss: {}".format(i, running_loss / len(trainloader)))

# Not in the tutorial: bring the segments back and test on the official 10,000 images.
for model in models:
    model.get()
test_images, test_labels = datasets.materialize(
    datasets.MNIST(cli.data, train=False, transform=transform)
)
with torch.no_grad():
    predictions = models[1](models[0](test_images.view(len(test_images), -1))).argmax(1)
correct = (predictions == test_labels).sum().item()
print(f"Test set: Accuracy: {correct}/{len(test_labels)} ({100 * correct / len(test_labels):.2f}%)")
