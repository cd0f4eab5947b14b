"""FedAdam (Reddi et al. 2021, see fedopt): `v` is a moving average of squared
pseudo-gradients."""

from __future__ import annotations

import torch

from tether.federated.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """FedOpt with Adam's `v = beta2 * v + (1 - beta2) * delta^2`."""

    name = "fedadam"

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v.mul_(self.beta2).add_(squared, alpha=1 - self.beta2)
