"""The worker's side of a secure aggregation round: `secure_fit` trains as `fit` does, but
keeps the weights; the update, quantised into the ring, stays in a `MaskingClient` in the
node's store (its pointer is the coordinator's), and the protocol's steps run on it there.
What these ops return is all that leaves the worker: public keys, sealed shares, the masked
update, shares for the unmasking (tether.privacy.secagg.protocol).

Every argument comes from the coordinator and is checked before use (`Setup.parse`, and the
protocol's own checks of rosters, shares and survivor lists); a `MaskingClient` has no op
that reads it and is not plain data, so it never leaves the node itself."""

from __future__ import annotations

from typing import Any

import torch

from tether.federated.delegated.training import fit
from tether.privacy.dp import OwnerDP
from tether.privacy.secagg import MaskingClient, Setup


def secure_fit(
    spec: Any,
    data: Any,
    targets: Any,
    config: Any,
    setup: Any,
    name: Any,
    by_samples: Any,
    *,
    max_elements: int | None = None,
    privacy: OwnerDP | None = None,
) -> tuple[MaskingClient, dict[str, Any]]:
    """Train (as `fit`), encode the move from the spec's weights, weighted by the samples
    used (`by_samples`) or by 1, and start this worker's part in the round as `name`. Returns
    the `MaskingClient` (to keep) and what may leave: its public `keys`, the training
    `seconds` and, with DP-SGD, the `privacy` spent."""
    parsed = Setup.parse(setup)
    if type(by_samples) is not bool:
        raise ValueError(f"by_samples must be true or false, got {by_samples!r}")
    result = fit(spec, data, targets, config, max_elements=max_elements, privacy=privacy)
    weight = result["samples"] if by_samples else 1
    vector = parsed.encoding.encode(result["weights"], spec["state"], weight)
    client = MaskingClient(name, parsed, vector)
    receipt: dict[str, Any] = {"keys": client.keys(), "seconds": result["seconds"]}
    if "privacy" in result:
        receipt["privacy"] = result["privacy"]
    return client, receipt


def share_keys(client: MaskingClient, roster: Any) -> dict[str, bytes]:
    return client.share_keys(roster)


def masked_input(client: MaskingClient, sealed: Any) -> torch.Tensor:
    return torch.from_numpy(client.masked_input(sealed))


def unmask(client: MaskingClient, survivors: Any) -> dict[str, dict[str, bytes]]:
    return client.unmask(survivors)
