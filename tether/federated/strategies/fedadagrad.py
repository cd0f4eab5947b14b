"""FedAdagrad (Reddi et al. 2021, see fedopt): `v` sums the squared pseudo-gradients."""

from __future__ import annotations

from typing import Any

import torch

from tether.federated.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    """FedOpt with Adagrad's `v = v + delta^2` (so it takes no beta2)."""

    name = "fedadagrad"

    def __init__(
        self, *, server_lr: float = 0.01, beta1: float = 0.9, tau: float = 1e-3, **base: Any
    ) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, tau=tau, **base)

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v.add_(squared)
