"""Duet's differentially private releases: the node's op and the scientist's `ptr.publish`.

The owner's grant of a privacy budget (`OwnerDuet.grant`) is a standing approval. `RELEASE`
(`tether.duet.release`) is an approving routine (`tether.ops.register(..., approves=True)`):
the node hands it only published data itself and the caller's id; it runs
`tether.privacy.dp.release` (checks, charges the budget, clips, noises) and returns the noisy
value as `Approved`, which the node files as a request the budget accepted. `BUDGET`
(`tether.duet.budget`) tells the scientist what their grants allow and have left. The owner
binds both to its `Budgets` (`Node.bind`), so no client can pass one.
"""

from __future__ import annotations

from typing import Any

import torch

from tether.node import Approved, Caller
from tether.node.requests import MAX_NAME_CHARS, MAX_REASON_CHARS
from tether.ops import register
from tether.privacy.dp import Budgets
from tether.privacy.dp.ledger import BudgetError
from tether.privacy.dp.release import Query, query, release
from tether.remote.pointer import Pointer, set_publisher


def _release(data: Any, asked: Any, *, budgets: Any = None, caller: Caller) -> Approved:
    """The node side of `publish` (tether.privacy.dp.release.release does the work)."""
    if not isinstance(budgets, Budgets):
        raise BudgetError("this node's owner grants no privacy budgets")
    texts = Query.parse(asked)  # the request the release becomes must fit the desk
    if len(texts.name) > MAX_NAME_CHARS or len(texts.reason) > MAX_REASON_CHARS:
        raise ValueError(f"name is at most {MAX_NAME_CHARS} characters, reason {MAX_REASON_CHARS}")
    made = release(data, asked, budgets, caller.client, caller.published)
    return Approved(made.value, made.name, made.reason, f"budget {made.account}")


def _remaining(*, budgets: Any = None, caller: Caller) -> list[dict[str, Any]]:
    """The node side of `duet.budget`: the caller's grants, what they spent and what is left
    (a function of the owner's grants and the caller's own releases only)."""
    return budgets.remaining(caller.client) if isinstance(budgets, Budgets) else []


RELEASE = register(
    "tether.duet.release", _release, releases=True, data_args=(0,), approves=True
).path
BUDGET = register("tether.duet.budget", _remaining, caller=True).path


def publish(
    pointer: Pointer,
    aggregate: str = "sum",
    bounds: tuple[float, float] | None = None,
    *,
    mechanism: str = "gaussian",
    sigma: float | None = None,
    epsilon: float | None = None,
    bins: int = 10,
    name: str = "",
    reason: str = "",
) -> torch.Tensor:
    """`ptr.publish(...)`: a differentially private aggregate of the published data `pointer`
    names, computed and noised by its owner and charged to the budget they granted you
    (tether.privacy.dp.release says how each aggregate is noised). Raises what the owner's
    node refused: a query it cannot bound, or one your budget cannot pay for (saying what is
    spent and what remains)."""
    wire = query(
        aggregate,
        bounds,
        mechanism=mechanism,
        sigma=sigma,
        epsilon=epsilon,
        bins=bins,
        name=name,
        reason=reason,
    )
    result = pointer.client.call(RELEASE, [pointer.id, wire], {}, kind="tensor", refs=1)
    return result.get(name=name, reason=reason)  # type: ignore[union-attr]


set_publisher(publish)
