"""FedNova (Wang, Liu, Liang, Joshi, Poor 2020, "Tackling the Objective Inconsistency Problem
in Heterogeneous Federated Optimization"): clients that take more local steps move further,
and plain averaging then favours their objective. FedNova averages each client's move per
step, `(y_i - x) / tau_i`, weighted by samples `p_i`, and takes `tau_eff = sum p_i tau_i` such
steps: `x = x + tau_eff * sum p_i (y_i - x) / tau_i`. With equal steps everywhere it is FedAvg.

`tau_i` is the client's count of local SGD steps, the normaliser of plain SGD; with momentum
the paper's normaliser differs, and this one is an approximation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from tether.federated.strategies.base import State, Strategy, Update, average, moved


class FedNova(Strategy):
    """FedAvg of the clients' moves normalised by their local step counts."""

    name = "fednova"
    needs_each_update = True

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        averaged = average(updates, self.name)
        if any(u.steps < 1 for u in updates):
            raise ValueError("fednova: every update must have taken at least one step")
        total = sum(u.samples for u in updates)
        shares = [u.samples / total for u in updates]
        effective = sum(p * u.steps for p, u in zip(shares, updates, strict=True))
        steps = {}
        for key, x in global_state.items():
            if not x.is_floating_point():
                continue
            step = torch.zeros_like(x)
            for p, u in zip(shares, updates, strict=True):
                step.add_(u.state[key] - x, alpha=effective * p / u.steps)
            steps[key] = step
        return moved(global_state, steps, averaged)
