"""Datasets that work offline, and `materialize` to turn any dataset into tensors."""

from tether.datasets.base import BaseDataset, materialize
from tether.datasets.mnist import MNIST

__all__ = ["MNIST", "BaseDataset", "materialize"]
