"""Delegated training: a coordinator sends a model (as data) and a config, each worker runs
`fit`/`evaluate` on its own data. Importing this package registers the two node ops."""

from tether.federated.delegated.training import evaluate, fit
from tether.ops import register

FIT = register("tether.federated.fit", fit, node_limited=True).path
EVALUATE = register("tether.federated.evaluate", evaluate, node_limited=True).path

__all__ = ["EVALUATE", "FIT"]
