"""FedYogi (Reddi et al. 2021, see fedopt): `v` moves towards the squared pseudo-gradient by a
fixed fraction of it, so it grows and shrinks more slowly than Adam's."""

from __future__ import annotations

import torch

from tether.federated.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """FedOpt with Yogi's `v = v - (1 - beta2) * delta^2 * sign(v - delta^2)`."""

    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v.sub_(squared * torch.sign(v - squared), alpha=1 - self.beta2)
