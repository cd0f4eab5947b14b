"""The models the attacks are shown on (tests, examples/privacy_attack.py, the benchmark): the
tutorial's MLP (784-500-10), and LeNet with sigmoids as in the DLG paper; and `pixels`, which
turns a normalized MNIST image, or a reconstruction of one, back into pixels in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tether.datasets.mnist import MEAN, STD


def mlp() -> nn.Module:
    """784-500-10 with ReLU, returning log-probabilities."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1)
    )


class LeNet(nn.Module):
    """The DLG paper's LeNet for 28 x 28 images: sigmoids, so gradient matching is smooth."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(588, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.body(x), dim=1)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """A normalized MNIST image (or a reconstruction) as 28 x 28 pixels in [0, 1]."""
    return (x.detach().double() * STD + MEAN).clamp(0, 1).reshape(28, 28)
