"""Aggregation strategies, one file each: `base` (the round's steps, with FedAvg's behaviour:
`Strategy`, `Update`, `Task`), a file per strategy, and `registry` (strategies by name, with
their parameters, for the command line and federation files)."""

from tether.federated.strategies.base import (
    State,
    Strategy,
    StrategyState,
    Task,
    Update,
    weighted_average,
)
from tether.federated.strategies.dpfedavg import DPFedAvg
from tether.federated.strategies.fedadagrad import FedAdagrad
from tether.federated.strategies.fedadam import FedAdam
from tether.federated.strategies.fedavg import FedAvg
from tether.federated.strategies.fedavgm import FedAvgM
from tether.federated.strategies.fednova import FedNova
from tether.federated.strategies.fedopt import FedOpt
from tether.federated.strategies.fedprox import FedProx
from tether.federated.strategies.fedyogi import FedYogi
from tether.federated.strategies.krum import Krum, MultiKrum
from tether.federated.strategies.median import FedMedian
from tether.federated.strategies.registry import PARAMETERS, STRATEGIES, make_strategy
from tether.federated.strategies.scaffold import Scaffold
from tether.federated.strategies.trimmed_mean import TrimmedMean

__all__ = [
    "PARAMETERS",
    "STRATEGIES",
    "DPFedAvg",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedNova",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "Scaffold",
    "State",
    "Strategy",
    "StrategyState",
    "Task",
    "TrimmedMean",
    "Update",
    "make_strategy",
    "weighted_average",
]
