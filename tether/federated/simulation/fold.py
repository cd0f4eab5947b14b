"""FedAvg's aggregation folded in as updates arrive: a round holds one model's worth of
weights, not one per client (1,000 clients of the MNIST MLP: 0.6 GB of updates otherwise).

The base `Strategy.aggregate` is the samples-weighted average of the updates, which is linear,
so the engine adds each update into a running sum as the backend yields it and hands the
strategy one update that holds the round's average: `aggregate` of that one update is the
average itself. Strategies that override `aggregate` (median, Krum, server optimizers,
SCAFFOLD) see every update, held until the round ends. The sum is taken in each tensor's own
dtype (integer tensors in float64, rounded at the end) as `weighted_average` takes it; the
two differ only in float rounding (~1e-7 relative), which the tests bound.
"""

from __future__ import annotations

import torch

from tether.federated.strategies import State, Strategy, Update


def folds(strategy: Strategy) -> bool:
    """Whether `strategy` aggregates with the base samples-weighted average."""
    return type(strategy).aggregate is Strategy.aggregate


class RunningAverage:
    """The samples-weighted sum of the updates added so far."""

    def __init__(self) -> None:
        self.sums: State = {}
        self.samples = self.steps = self.count = 0

    def add(self, update: Update) -> None:
        weight = update.samples
        if weight < 0:
            raise ValueError(f"{update.worker} reported {weight} samples")
        if not self.sums:
            self.sums = {
                key: value.mul(weight) if value.is_floating_point() else value.double() * weight
                for key, value in update.state.items()
            }
        else:
            if update.state.keys() != self.sums.keys():
                raise ValueError(
                    f"{update.worker}'s weights have keys "
                    f"{sorted(set(update.state) ^ set(self.sums))} that the others lack or "
                    "have: all clients must train the same model"
                )
            for key, total in self.sums.items():
                total.add_(update.state[key], alpha=weight)
        self.samples += weight
        self.steps += update.steps
        self.count += 1

    def update(self, dtypes: dict[str, torch.dtype]) -> Update:
        """The average as one update carrying all the samples (`dtypes`: each tensor's own)."""
        if self.samples <= 0:
            raise ValueError("the updates carry no samples to average by")
        average = {}
        for key, total in self.sums.items():
            mean = total.div_(self.samples)
            average[key] = mean if mean.dtype == dtypes[key] else mean.round_().to(dtypes[key])
        return Update(f"average of {self.count} clients", average, self.samples, self.steps)
