"""A federated run's checkpoint: the global weights and the strategy's tensors (safetensors),
the history and the strategy's numbers (JSON), written atomically after every round, so
`resume=True` continues where a stopped run left off, with the same result (a stateful
strategy's momentum, moments or control variates included)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save  # up front: a Ctrl-C never cuts this import short

from tether.errors import FederationError
from tether.federated import report
from tether.federated.delegated import modelspec
from tether.federated.strategies import Strategy, StrategyState

CHECKPOINT_JSON = "checkpoint.json"


def fingerprint(spec: dict, config: Mapping[str, Any]) -> str:
    """What must match for a checkpoint to fit: the model's structure and the config."""
    described = json.dumps([modelspec.structure(spec), dict(config)], default=str, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


class Checkpoint:
    """The checkpoint in `directory` of a run whose model and config have `fingerprint`."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint

    def save(
        self,
        r: int,
        rounds: int,
        state: Mapping[str, torch.Tensor],
        history: list[dict[str, Any]],
        strategy: Strategy,
    ) -> None:
        """Tensors first (new files per round), then the JSON that names them: the JSON's
        replacement is the commit, so a kill at any moment leaves the last complete round."""
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = self._write(f"global-round{r:05d}.safetensors", state)
        kept = strategy.state_dict()
        tensors = self._write(f"strategy-round{r:05d}.safetensors", kept.tensors)
        meta = {
            "round": r,
            "rounds": rounds,
            "weights": weights,
            "fingerprint": self.fingerprint,
            "strategy": {"name": strategy.name, "tensors": tensors, "values": kept.values},
            "history": history,
        }
        report.write_atomic(
            self.directory / CHECKPOINT_JSON,
            lambda f: f.write(json.dumps(meta, indent=1).encode()),
        )
        for old in (
            *self.directory.glob("global-round*.safetensors"),
            *self.directory.glob("strategy-round*.safetensors"),
        ):
            if old.name not in (weights, tensors):
                old.unlink(missing_ok=True)

    def _write(self, name: str, tensors: Mapping[str, torch.Tensor]) -> str:
        payload = save({k: v.contiguous() for k, v in tensors.items()})
        report.write_atomic(self.directory / name, lambda f: f.write(payload))
        return name

    def round(self) -> int | None:
        """The round the checkpoint holds, read from disk (so it is what a resume continues
        from, even when a run was stopped mid-save); None without one of this run's."""
        path = self.directory / CHECKPOINT_JSON
        if not path.exists():
            return None
        meta = json.loads(path.read_text())
        return int(meta["round"]) if meta.get("fingerprint") == self.fingerprint else None

    def load(
        self, keys: Iterable[str], strategy: Strategy
    ) -> tuple[int, dict[str, torch.Tensor], list[dict[str, Any]]] | None:
        """The last round completed, its weights and the history, with `strategy` given back
        its state; None when there is no checkpoint. Raises FederationError if it was made for
        another model, config or strategy, or its weights do not have `keys`."""
        path = self.directory / CHECKPOINT_JSON
        if not path.exists():
            return None
        meta = json.loads(path.read_text())
        if meta.get("fingerprint") != self.fingerprint:
            raise FederationError(
                f"the checkpoint in {self.directory} was made with another "
                "model or training config; use those, or another directory"
            )
        state = load((self.directory / meta["weights"]).read_bytes())
        if state.keys() != set(keys):
            raise FederationError(
                f"the checkpoint's weights in {self.directory} do not fit this model"
            )
        self._restore(meta.get("strategy"), strategy)
        return int(meta["round"]), state, meta["history"]

    def _restore(self, saved: Any, strategy: Strategy) -> None:
        """Give `strategy` the state saved with it; FederationError if it is not the same."""
        if not isinstance(saved, dict) or saved.get("name") != strategy.name:
            made = saved.get("name") if isinstance(saved, dict) else None
            by = f"strategy {made}" if made else "a tether that did not save its strategy"
            raise FederationError(
                f"the checkpoint in {self.directory} was made by {by}, and this run uses "
                f"{strategy.name}: resume with that strategy, or use another directory"
            )
        try:
            tensors = load((self.directory / saved["tensors"]).read_bytes())
            strategy.load_state_dict(StrategyState(tensors, dict(saved["values"])))
        except (KeyError, TypeError, ValueError, OSError) as error:
            raise FederationError(
                f"the {strategy.name} state in the checkpoint in {self.directory} is damaged "
                f"({error}); use another directory"
            ) from None
