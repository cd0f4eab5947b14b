"""Differentially private training that a worker's owner sets and enforces.

`OwnerDP` holds the owner's floor and budget; `sgd` runs DP-SGD inside delegated `fit`
(Poisson-sampled batches, per-sample clipping by `ghost` or `per_sample`, Gaussian noise);
`accountant` turns steps into ε with Opacus's RDP accountant; `ledger` keeps what each dataset
has spent on the worker's disk. A DP-FedAvg strategy or a Duet budget can reuse the accountant
and the ledger as they are.
"""

from tether.privacy.dp.accountant import Steps, epsilon
from tether.privacy.dp.ledger import BudgetError, Charge, Ledger
from tether.privacy.dp.owner import EXACT_METRICS_REFUSED, DPSettings, OwnerDP

__all__ = [
    "EXACT_METRICS_REFUSED",
    "BudgetError",
    "Charge",
    "DPSettings",
    "Ledger",
    "OwnerDP",
    "Steps",
    "epsilon",
]
