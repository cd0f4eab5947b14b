"""Simulated federations: thousands of virtual clients in one process (or on a Ray cluster),
trained by the same `train` and strategies as `tether train`. `engine` runs the rounds,
`client` is one client's training, `backend` says where clients train."""

from tether.federated.simulation.backend import (
    Backend,
    ClientJob,
    ClientResult,
    SequentialBackend,
)
from tether.federated.simulation.client import ClientTrainer, run_client
from tether.federated.simulation.engine import Simulation, SimulationResult

__all__ = [
    "Backend",
    "ClientJob",
    "ClientResult",
    "ClientTrainer",
    "SequentialBackend",
    "Simulation",
    "SimulationResult",
    "run_client",
]
