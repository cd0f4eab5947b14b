"""The tutorials' models: the websocket tutorial's CNN (`Net`) and a small MLP, by name for
`tether train --model`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """The websocket tutorial's CNN: two 5x5 convolutions (1->20->50), two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def mlp() -> nn.Module:
    """A small MLP for MNIST (784-200-10)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10), nn.LogSoftmax(dim=1)
    )


MODELS: dict[str, Callable[[], nn.Module]] = {"cnn": Net, "mlp": mlp}
