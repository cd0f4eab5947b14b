"""Federated data: datasets cut into parts that live on workers, their loader, the
partitioners, and the per-worker optimizers (`Optims`)."""

from tether.federated.data.dataset import FederatedDataset, WorkerData, federate, install
from tether.federated.data.loader import FederatedDataLoader
from tether.federated.data.optims import Optims

__all__ = ["FederatedDataLoader", "FederatedDataset", "Optims", "WorkerData", "federate", "install"]
