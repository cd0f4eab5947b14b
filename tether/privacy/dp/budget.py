"""Privacy budgets a data owner grants scientists, and what each has spent.

A grant is the owner's standing approval: the scientist may release differentially private
aggregates (`tether.privacy.dp.release`) until their account reaches ε at δ. An account is
per scientist (their Duet client id, or a name the owner gives it so that it outlives the
session) and covers either one published dataset or, by default, all the owner's published
data at once (safe when the same people appear in several published objects). Spends go to a
`Ledger`: Gaussian releases as steps composed by Opacus's RDP accountant, Laplace releases as
pure ε; a ledger file keeps them across restarts.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.privacy.dp.accountant import Steps
from tether.privacy.dp.ledger import BudgetError, Charge, Ledger


@dataclass(frozen=True)
class Grant:
    """ε at δ for `scientist` on `dataset` (a published key; None: all published data),
    spent from the ledger's account `account`."""

    scientist: str
    epsilon: float
    delta: float
    dataset: str | None
    account: str


@dataclass(frozen=True)
class Cost:
    """What one release spends: Gaussian `steps` (noise multiplier, rate 1) and `pure` ε."""

    steps: Steps | None = None
    pure: float = 0.0


class Budgets:
    """The owner's grants and the spend against them. `ledger`: the JSON file that keeps the
    spend (None: in memory, forgotten at exit)."""

    def __init__(self, ledger: str | Path | Ledger | None = None) -> None:
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self._grants: dict[tuple[str, str | None], Grant] = {}
        self._releases: Counter[str] = Counter()
        self._lock = threading.Lock()

    def grant(
        self,
        scientist: str,
        epsilon: float,
        delta: float,
        *,
        dataset: str | None = None,
        account: str | None = None,
    ) -> Grant:
        """Let `scientist` release DP aggregates up to ε = `epsilon` at `delta` on `dataset`
        (None: all published data, one account). Granting again changes the limit; what was
        spent stays spent."""
        if not isinstance(scientist, str) or not scientist:
            raise TypeError("grant a budget to a scientist's client id (a string)")
        if type(epsilon) not in (int, float) or not 0 < epsilon < math.inf:
            raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
        if type(delta) not in (int, float) or not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        name = account or scientist
        where = f"duet {name}" + (f" on {dataset}" if dataset is not None else "")
        found = Grant(scientist, float(epsilon), float(delta), dataset, where)
        with self._lock:
            self._grants[(scientist, dataset)] = found
        return found

    def grant_for(self, scientist: str, datasets: tuple[str, ...]) -> Grant:
        """The grant a release on `datasets` (published keys) spends from: the scientist's
        grant for that one dataset, else their grant for all data; BudgetError if none."""
        with self._lock:
            if len(datasets) == 1 and (scientist, datasets[0]) in self._grants:
                return self._grants[(scientist, datasets[0])]
            found = self._grants.get((scientist, None))
        if found is None:
            raise BudgetError(
                "the owner granted you no privacy budget for this data: ask them for one "
                "(duet.grant(...) on their side)"
            )
        return found

    def charge(self, grant: Grant, cost: Cost, what: str) -> Charge:
        """Record `cost` on the grant's account if it stays within the grant; BudgetError
        saying what is spent and what remains otherwise. Atomic: concurrent releases
        cannot overspend (the ledger charges under its lock)."""
        charged = self.ledger.charge(
            grant.account,
            cost.steps,
            grant.delta,
            grant.epsilon,
            pure=cost.pure,
            owner="the data owner",
            on=f"your budget ({grant.account})",
            what=what,
        )
        with self._lock:
            self._releases[grant.account] += 1
        return charged

    def remaining(self, scientist: str) -> list[dict[str, Any]]:
        """What each of the scientist's grants allows and has left (what `duet.budget` shows
        the scientist: it depends only on their own releases and the owner's grants)."""
        return [row for row in self.table() if row["scientist"] == scientist]

    def table(self) -> list[dict[str, Any]]:
        with self._lock:
            grants = list(self._grants.values())
            releases = dict(self._releases)
        rows = []
        for g in grants:
            spent = self.ledger.spent(g.account, g.delta)
            rows.append(
                {
                    "scientist": g.scientist,
                    "dataset": g.dataset or "all",
                    "account": g.account,
                    "epsilon": g.epsilon,
                    "delta": g.delta,
                    "spent": spent,
                    "remaining": max(g.epsilon - spent, 0.0),
                    "releases": releases.get(g.account, 0),
                }
            )
        return rows

    @property
    def pandas(self) -> Any:
        """Every grant as a table: scientist, dataset, account, ε, δ, spent, remaining, and
        how many releases this session charged to it."""
        import pandas as pd

        return pd.DataFrame(
            self.table(),
            columns=[
                "scientist",
                "dataset",
                "account",
                "epsilon",
                "delta",
                "spent",
                "remaining",
                "releases",
            ],
        )

    def __repr__(self) -> str:
        return self.pandas.to_string()
