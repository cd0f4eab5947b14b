"""The privacy a worker has spent, per dataset, kept on the worker's disk.

Every DP training run is charged here before it starts, across all rounds and all clients, so
the budget holds however the steps are split. With a path the ledger is a JSON file, rewritten
atomically (a temporary file beside it, then `os.replace`) at every charge: a restart, or a
crash mid-training, never forgets a spend. A dataset is named by a fingerprint of its
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

VERSION = 1


class BudgetError(ValueError):
    """A DP training run would take a dataset past the owner's privacy budget."""


@dataclass(frozen=True)
class Charge:
    """What one run cost: ε of its own steps, and the dataset's total after it, at `delta`."""

    epsilon: float
    total: float
    delta: float


class Ledger:
    """Per-dataset histories of DP-SGD steps; `path`: the JSON file (None: in memory only)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._histories: dict[str, list[Steps]] = {}
        if self.path is not None and self.path.exists():
            self._histories = _read(self.path)

    def history(self, dataset: str) -> list[Steps]:
        with self._lock:
            return list(self._histories.get(dataset, []))

    def datasets(self) -> list[str]:
        with self._lock:
            return list(self._histories)

    def spent(self, dataset: str, delta: float) -> float:
        """ε spent so far on `dataset`."""
        return epsilon(self.history(dataset), delta)

    def charge(self, dataset: str, steps: Steps, delta: float, limit: float) -> Charge:
        """Record `steps` on `dataset` (and write the file) if the total stays within `limit`;
        BudgetError saying what was spent and what the limit is otherwise."""
        with self._lock:
            before = self._histories.get(dataset, [])
            after = compose([*before, steps])
            total = epsilon(after, delta)
            if total > limit:
                spent = epsilon(before, delta)
                raise BudgetError(
                    f"privacy budget: this worker's owner allows ε ≤ {limit:g} (δ = {delta:g}) "
                    f"on dataset {dataset[:12]}; ε = {spent:.4g} is spent and this training "
                    f"({steps.count} steps at noise {steps.noise:g}, sampling rate "
                    f"{steps.rate:.4g}) would bring it to {total:.4g}"
                )
            self._histories[dataset] = after
            if self.path is not None:
                _write(self.path, self._histories)
        return Charge(epsilon([steps], delta), total, delta)


def fingerprint(*tensors: torch.Tensor) -> str:
    """A SHA-256 of the tensors' dtypes, shapes and bytes: a dataset's name in the ledger."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _read(path: Path) -> dict[str, list[Steps]]:
    """The ledger file's histories; ValueError naming the file if it is not one."""
    try:
        data: Any = json.loads(path.read_text())
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, not {VERSION}")
        return {
            str(name): [Steps(float(n), float(r), int(c)) for n, r, c in entry["steps"]]
            for name, entry in data["datasets"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path} is not a readable privacy ledger ({exc}); it records what was spent, so "
            "it is not replaced: restore it, or move it away to start a new one"
        ) from None


def _write(path: Path, histories: dict[str, list[Steps]]) -> None:
    data = {
        "version": VERSION,
        "datasets": {
            name: {"steps": [[s.noise, s.rate, s.count] for s in history]}
            for name, history in histories.items()
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
