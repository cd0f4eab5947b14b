"""Federated learning: federated data (`data`), delegated training (`delegated`: the model as
data, `fit`/`evaluate` on the worker), aggregation `strategies`, and the round loop
(`coordinator`), with its `checkpoint`, tutorial `models` and `report`."""

from tether.federated.data import (
    FederatedDataLoader,
    FederatedDataset,
    Optims,
    WorkerData,
    federate,
    install,
)
from tether.federated.delegated import EVALUATE, FIT  # registers the fit and evaluate ops

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
