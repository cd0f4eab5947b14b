"""Aggregation strategies, one file each: `base` (the shape every strategy has, `Update`,
`weighted_average`), `fedavg`."""

from tether.federated.strategies.base import State, Strategy, Update, weighted_average
from tether.federated.strategies.fedavg import fedavg

__all__ = ["State", "Strategy", "Update", "fedavg", "weighted_average"]
