"""The PySyft tutorial "Part 2: Intro to Federated Learning", with only the import changed,
and each printed loss saying what it is (the tutorial printed the bare `tensor(...)`).

Run: python examples/intro_federated.py
"""

import torch
from torch import nn, optim

import tether as sy

torch.manual_seed(0)  # not in the tutorial: the same numbers on every run

# ---- Section 2.1: the centralised toy example -----------------------------------------------

# A Toy Dataset
data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]])
target = torch.tensor([[0], [0], [1], [1.0]])

# A Toy Model
model = nn.Linear(2, 1)


def train():
    # Training Logic
    opt = optim.SGD(params=model.parameters(), lr=0.1)
    for step in range(20):
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
        print(f"{loss.data!r}, the loss of centralised training step {step + 1}/20")


print("Centralised training: the toy data in one place, 20 steps")
train()

# ---- The federated version --------------------------------------------------------------------

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

from tether.federated.floptimizer import Optims  # noqa: E402  (as in the tutorial)

workers = ["bob", "alice"]
optims = Optims(workers, optim=optim.Adam(params=model.parameters(), lr=0.1))


def train():
    # Training Logic
    for iteration in range(10):
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
            loss = loss.get()  # NEW) slight edit... need to call .get() on loss
            print(f"{loss!r}, the loss on {data.location.id}'s data, iteration {iteration + 1}/10")


# federated averaging

print("Federated training: bob and alice each hold half the data; the model goes to each")
train()
