"""Federated learning: federated datasets and loaders, per-worker optimizers, partitioners."""

from tether.federated.dataloader import FederatedDataLoader
from tether.federated.dataset import FederatedDataset, WorkerData, federate, install
from tether.federated.delegated import EVALUATE, FIT  # registers the fit and evaluate ops
from tether.federated.floptimizer import Optims

__all__ = [
    "EVALUATE",
    "FIT",
    "FederatedDataLoader",
    "FederatedDataset",
    "Optims",
    "WorkerData",
    "federate",
    "install",
]
