"""Differentially private training that a worker's owner sets and enforces.

`OwnerDP` holds the owner's floor and budget; `sgd` runs DP-SGD inside delegated `fit`
(Poisson-sampled batches, per-sample clipping by `ghost` or `per_sample`, Gaussian noise);
`accountant` turns steps into ε with Opacus's RDP accountant; `ledger` keeps what each dataset
has spent on the worker's disk. `release` computes DP releases of bounded aggregates (a
Duet's `ptr.publish(...)`), within the budgets a data owner grants scientists (`budget`).
"""

from tether.privacy.dp.accountant import Steps, epsilon
from tether.privacy.dp.budget import Budgets, Grant
from tether.privacy.dp.ledger import BudgetError, Charge, Ledger
from tether.privacy.dp.owner import EXACT_METRICS_REFUSED, DPSettings, OwnerDP
from tether.privacy.dp.release import Query, Release, ReleaseError, release

__all__ = [
    "EXACT_METRICS_REFUSED",
    "BudgetError",
    "Budgets",
    "Charge",
    "DPSettings",
    "Grant",
    "Ledger",
    "OwnerDP",
    "Query",
    "Release",
    "ReleaseError",
    "Steps",
    "epsilon",
    "release",
]
