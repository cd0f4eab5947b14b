"""Delegated training: a coordinator sends a model (as data) and a config, each worker runs
`fit`/`evaluate` on its own data. Importing this package registers the two node ops, as
releasing routines: what they return (weights and metrics) is meant to leave a worker whose
release policy is `training`."""

from tether.federated.delegated.training import evaluate, fit
from tether.ops import register

FIT = register("tether.federated.fit", fit, node_limited=True, releases=True).path
EVALUATE = register("tether.federated.evaluate", evaluate, node_limited=True, releases=True).path

__all__ = ["EVALUATE", "FIT"]
