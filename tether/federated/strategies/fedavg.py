"""FedAvg (McMahan et al. 2017): the samples-weighted average of the clients' weights. It is
the base `Strategy` itself; the name is here so every strategy has its file."""

from tether.federated.strategies.base import Strategy


class FedAvg(Strategy):
    """FedAvg: every step as `Strategy` defines it."""
