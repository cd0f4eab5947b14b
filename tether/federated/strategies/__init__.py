"""Aggregation strategies, one file each: `base` (the round's steps, with FedAvg's behaviour:
`Strategy`, `Update`, `Task`, `weighted_average`), `fedavg`."""

from tether.federated.strategies.base import State, Strategy, Task, Update, weighted_average
from tether.federated.strategies.fedavg import FedAvg

__all__ = ["FedAvg", "State", "Strategy", "Task", "Update", "weighted_average"]
