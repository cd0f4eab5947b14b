"""FedAdagrad (Reddi et al. 2021, see fedopt): `v` sums the squared pseudo-gradients."""

from __future__ import annotations

import torch

from tether.federated.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    """FedOpt with Adagrad's `v = v + delta^2` (beta2 is not used)."""

    name = "fedadagrad"

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v.add_(squared)
