"""Federated learning: per-worker optimizers, federated datasets and loaders, partitioners."""

from tether.federated.floptimizer import Optims

__all__ = ["Optims"]
