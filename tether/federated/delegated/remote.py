"""The coordinator's side of delegated training: run `fit` and `evaluate` on a worker, through
pointers, and check what it answers before anything averages it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tether.errors import FederationError, RemoteError
from tether.federated.delegated import EVALUATE, FIT, SECURE_FIT
from tether.federated.delegated.training import EvalConfig, TrainConfig
from tether.remote.client import ref
from tether.remote.pointer import get_all


def dataset_pointers(client: Any, key: str) -> tuple[Any, Any]:
    """Pointers to a published `(data, targets)` dataset (the form `tether worker` publishes).
    Waits for the lookup, so an unknown key is reported as such, not by a later command."""
    data, targets = client.worker.dataset(key)
    try:
        client.flush()
    except RemoteError as exc:  # not a stale pointer: the worker has no such dataset
        raise FederationError(f"worker {client.name!r} has no dataset {key!r}: {exc}") from None
    return data, targets


def remote_fit(
    client: Any,
    dataset: tuple[Any, Any],
    spec: dict,
    config: TrainConfig,
    correction: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Run `fit` on a worker's dataset; its answer (weights and metrics). `correction`:
    SCAFFOLD's control-variate difference for this worker (see `training.train`)."""
    data, targets = dataset
    arguments = [spec, ref(data), ref(targets), config.to_dict()]
    if correction is not None:
        arguments.append(dict(correction))
    result = client.call(FIT, arguments, kind="object", flush=True)
    return _checked(result.get(), spec["state"], client.name)


def remote_secure_fit(
    client: Any,
    dataset: tuple[Any, Any],
    spec: dict,
    config: TrainConfig,
    setup: dict,
    name: str,
    by_samples: bool,
) -> tuple[Any, dict]:
    """Run `secure_fit` on a worker's dataset: a pointer to the `MaskingClient` it keeps (its
    update stays there) and its receipt (public keys, seconds, DP spent), checked."""
    data, targets = dataset
    arguments = [spec, ref(data), ref(targets), config.to_dict(), setup, name, by_samples]
    kept, receipt = client.call_each(SECURE_FIT, arguments, None, 2, kind="object")
    answer = receipt.get()
    keys = answer.get("keys") if isinstance(answer, dict) else None
    if not (
        isinstance(keys, dict)
        and set(keys) == {"cipher", "mask"}
        and all(isinstance(k, bytes) and len(k) == 32 for k in keys.values())
        and isinstance(answer.get("seconds"), float)
    ):
        raise FederationError(
            f"worker {client.name!r} answered secure aggregation with something other than "
            "its public keys and metrics"
        )
    return kept, answer


def remote_step(client: Any, op: str, kept: Any, argument: Any) -> Any:
    """One step of the secure aggregation protocol on the worker's kept `MaskingClient`."""
    return client.call(op, [ref(kept), argument], kind="object", flush=True).get()


def _checked(answer: Any, state: Mapping[str, torch.Tensor], worker: str) -> dict:
    """A worker's answer, if it can be averaged: weights of the model's shapes, samples used."""
    weights = answer.get("weights") if isinstance(answer, dict) else None
    fits = (
        isinstance(weights, dict)
        and weights.keys() == state.keys()
        and all(
            isinstance(weights[k], torch.Tensor)
            and weights[k].shape == v.shape
            and weights[k].dtype == v.dtype
            for k, v in state.items()
        )
    )
    samples = answer.get("samples") if fits else None
    if not (
        fits
        and type(samples) is int
        and samples > 0
        and isinstance(answer.get("losses"), list)
        and isinstance(answer.get("seconds"), float)
    ):
        raise FederationError(
            f"worker {worker!r} answered with something other than this model's weights and metrics"
        )
    return answer


def remote_evaluate(
    client: Any, dataset: tuple[Any, Any], specs: Mapping[str, dict], config: EvalConfig
) -> dict[str, dict]:
    """Score several models on an evaluator's test set, in one round trip."""
    data, targets = dataset
    pointers = [
        client.call(
            EVALUATE, [spec, ref(data), ref(targets), config.to_dict()], kind="object", flush=True
        )
        for spec in specs.values()
    ]
    return dict(zip(specs, get_all(pointers), strict=True))
