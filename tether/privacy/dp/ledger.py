"""The privacy a worker has spent, per dataset (or per account), kept on the owner's disk.

Every DP training run is charged here before it starts, across all rounds and all clients, so
the budget holds however the steps are split; so is every DP release in a Duet, per scientist
(`tether.privacy.dp.budget`). An account holds Gaussian steps, composed by Opacus's RDP
accountant, and pure ε (Laplace releases), added to it: basic composition of the two. With a
path the ledger is a JSON file, rewritten atomically (a temporary file beside it, then
`os.replace`) at every charge: a restart, or a crash mid-training, never forgets a spend. A
dataset is named by a fingerprint of its
contents, so the same data is charged to one account under any key and after a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tether.privacy.dp.accountant import Steps, compose, epsilon

VERSION = 2  # 2 added "pure" (version 1 files, which have none, are read as pure ε = 0)


class BudgetError(ValueError):
    """A DP training run would take a dataset past the owner's privacy budget."""


@dataclass(frozen=True)
class Charge:
    """What one run cost: ε of its own steps, and the dataset's total after it, at `delta`."""

    epsilon: float
    total: float
    delta: float


class Ledger:
    """Per-dataset histories of Gaussian steps and sums of pure ε; `path`: the JSON file
    (None: in memory only)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._histories: dict[str, list[Steps]] = {}
        self._pure: dict[str, float] = {}
        if self.path is not None and self.path.exists():
            self._histories, self._pure = _read(self.path)

    def history(self, dataset: str) -> list[Steps]:
        with self._lock:
            return list(self._histories.get(dataset, []))

    def datasets(self) -> list[str]:
        with self._lock:
            return list(self._histories.keys() | self._pure.keys())

    def spent(self, dataset: str, delta: float) -> float:
        """ε spent so far on `dataset`."""
        with self._lock:
            pure = self._pure.get(dataset, 0.0)
        return epsilon(self.history(dataset), delta) + pure

    def charge(
        self,
        dataset: str,
        steps: Steps | None,
        delta: float,
        limit: float,
        *,
        pure: float = 0.0,
        owner: str = "this worker's owner",
        on: str = "",
        what: str = "",
    ) -> Charge:
        """Record `steps` and `pure` ε on `dataset` (and write the file) if the total stays
        within `limit`; BudgetError saying what was spent and what the limit is otherwise.
        `owner`, `on` (the account, by default the dataset's fingerprint) and `what` (the
        spend, by default the training's steps) word that error."""
        with self._lock:
            before = self._histories.get(dataset, [])
            after = compose([*before, steps]) if steps is not None else before
            pure_before = self._pure.get(dataset, 0.0)
            total = epsilon(after, delta) + pure_before + pure
            if total > limit * (1 + 1e-9):  # not refused for floating-point rounding alone
                spent = epsilon(before, delta) + pure_before
                what = what or (
                    f"this training ({steps.count} steps at noise {steps.noise:g}, sampling "
                    f"rate {steps.rate:.4g})"
                    if steps is not None
                    else f"this release (ε = {pure:g})"
                )
                raise BudgetError(
                    f"privacy budget: {owner} allows ε ≤ {limit:g} (δ = {delta:g}) on "
                    f"{on or 'dataset ' + dataset[:12]}; ε = {spent:.4g} is spent "
                    f"({max(limit - spent, 0):.4g} remains) and {what} would bring it to "
                    f"{total:.4g}"
                )
            self._histories[dataset] = after
            if pure:
                self._pure[dataset] = pure_before + pure
            if self.path is not None:
                _write(self.path, self._histories, self._pure)
        own = epsilon([steps], delta) if steps is not None else 0.0
        return Charge(own + pure, total, delta)


def fingerprint(*tensors: torch.Tensor) -> str:
    """A SHA-256 of the tensors' dtypes, shapes and bytes: a dataset's name in the ledger."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _read(path: Path) -> tuple[dict[str, list[Steps]], dict[str, float]]:
    """The ledger file's histories and pure ε; ValueError naming the file if it is not one."""
    try:
        data: Any = json.loads(path.read_text())
        if data.get("version") not in (1, VERSION):
            raise ValueError(f"version {data.get('version')!r}, not {VERSION}")
        datasets = data["datasets"].items()
        histories = {
            str(name): [Steps(float(n), float(r), int(c)) for n, r, c in entry["steps"]]
            for name, entry in datasets
        }
        pure = {str(name): float(entry.get("pure", 0.0)) for name, entry in datasets}
        return histories, {name: p for name, p in pure.items() if p}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path} is not a readable privacy ledger ({exc}); it records what was spent, so "
            "it is not replaced: restore it, or move it away to start a new one"
        ) from None


def _write(path: Path, histories: dict[str, list[Steps]], pure: dict[str, float]) -> None:
    data = {
        "version": VERSION,
        "datasets": {
            name: {
                "steps": [[s.noise, s.rate, s.count] for s in histories.get(name, [])],
                "pure": pure.get(name, 0.0),
            }
            for name in histories.keys() | pure.keys()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
