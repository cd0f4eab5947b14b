"""Differentially private releases of bounded aggregates, computed and noised by the data owner.

The scientist names published private data (a pointer from `duet.store[...]`), an aggregate,
the bounds each value is clipped to, and the noise: `ptr.publish("mean", bounds=(0, 1),
sigma=20.0)`. The owner's node runs `release` (in a Duet, as the op `tether.duet.release`:
tether.duet.budget): it computes the sensitivity from the bounds, charges the scientist's
budget (`tether.privacy.dp.budget`) — refusing what would exceed it — and only then clips,
aggregates and adds the noise; the noisy value leaves as a request the owner's grant
accepted, in the owner's request table and audit log.

The privacy unit is one row of the published tensor (its first dimension): neighbouring
datasets differ by one row added or removed. A row holds d values (the product of the other
dimensions), each clipped to [lo, hi] (NaN to lo); with m = max(|lo|, |hi|):

    aggregate   result                                   L1       L2
    sum         the column sums (the row's shape)        d·m      √d·m
    count       the number of rows                       1        1
    mean        noisy sum / noisy count, within bounds   (a sum and a count, each noised)
    histogram   counts in `bins` equal bins over [lo, hi] d        d

Gaussian: `sigma` is the noise's standard deviation on the sum (the count, the histogram);
its noise multiplier z = sigma / L2 is charged as one Gaussian mechanism, two for a mean (its
count gets noise z), composed by Opacus's RDP accountant (`accountant.epsilon`, rate 1).
Laplace: `epsilon` is charged as pure ε, at scale L1 / ε (a mean spends half on each part).

Only published data itself is accepted (the node refuses a derived tensor: one of its rows may
depend on many rows of the data); the per-row shape d is treated as public (it depends on no
one's presence), the number of rows never leaves but in noise. The noise comes from a torch
generator seeded from the OS's entropy, as DP-SGD's does (docs/privacy.md, "Randomness").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from tether.privacy.dp.accountant import Steps
from tether.privacy.dp.budget import Budgets, Cost

log = logging.getLogger(__name__)

AGGREGATES = ("sum", "mean", "count", "histogram")
MECHANISMS = ("gaussian", "laplace")
MAX_BINS = 10_000
_KEYS = frozenset(
    {"aggregate", "bounds", "mechanism", "sigma", "epsilon", "bins", "name", "reason"}
)


class ReleaseError(RuntimeError):
    """A release was charged but could not be computed (its cause is in the owner's log)."""


@dataclass(frozen=True)
class Query:
    """What the scientist asks for (see the module's docstring); `parse` checks a wire dict."""

    aggregate: str
    bounds: tuple[float, float]
    mechanism: str = "gaussian"
    sigma: float | None = None
    epsilon: float | None = None
    bins: int = 10
    name: str = ""
    reason: str = ""

    @classmethod
    def parse(cls, spec: Any) -> Query:
        """A query from its wire form, a dict of plain values; TypeError or ValueError naming
        what is wrong (they depend only on the query: a refusal tells nothing private)."""
        if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
            raise TypeError("a DP release takes a query: a dict with aggregate, bounds, ...")
        unknown = sorted(set(spec) - _KEYS)
        if unknown:
            raise TypeError(f"unknown query keys {unknown}: the keys are {sorted(_KEYS)}")
        aggregate, mechanism = spec.get("aggregate"), spec.get("mechanism", "gaussian")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}")
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}, not {mechanism!r}")
        bounds = spec.get("bounds")
        if not (
            isinstance(bounds, list | tuple)
            and len(bounds) == 2
            and all(type(b) in (int, float) for b in bounds)
        ):
            raise TypeError(f"bounds must be two numbers (low, high), got {bounds!r}")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds must be finite with low < high, got ({lo}, {hi})")
        sigma, epsilon = spec.get("sigma"), spec.get("epsilon")
        if mechanism == "gaussian":
            if epsilon is not None:
                raise ValueError("the Gaussian mechanism takes sigma (its noise), not epsilon")
            sigma = _positive("sigma", sigma)
        else:
            if sigma is not None:
                raise ValueError("the Laplace mechanism takes epsilon, not sigma")
            epsilon = _positive("epsilon", epsilon)
        bins = spec.get("bins", 10)
        if type(bins) is not int or not 1 <= bins <= MAX_BINS:
            raise ValueError(f"bins must be an int from 1 to {MAX_BINS}, got {bins!r}")
        name, reason = spec.get("name", ""), spec.get("reason", "")
        if not (isinstance(name, str) and isinstance(reason, str)):
            raise TypeError("name and reason are strings")
        return cls(aggregate, (lo, hi), mechanism, sigma, epsilon, bins, name, reason)


def _positive(name: str, value: Any) -> float:
    if type(value) not in (int, float) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Plan:
    """How a query is noised, from public facts only: the noise on its main part (sum, count
    or histogram: a standard deviation, or a Laplace scale), on a mean's count, and its cost."""

    noise: float
    count_noise: float
    cost: Cost


def sensitivity(query: Query, per_row: int) -> tuple[float, float]:
    """The L1 and L2 sensitivity of the query's main part to one row of `per_row` values."""
    if query.aggregate == "count":
        return 1.0, 1.0
    if query.aggregate == "histogram":
        return float(per_row), float(per_row)
    m = max(abs(query.bounds[0]), abs(query.bounds[1]))
    return per_row * m, math.sqrt(per_row) * m


def plan(query: Query, per_row: int) -> Plan:
    """The noise and the cost of a query on rows of `per_row` values."""
    l1, l2 = sensitivity(query, per_row)
    parts = 2 if query.aggregate == "mean" else 1
    if query.mechanism == "gaussian":
        sigma = query.sigma
        assert sigma is not None
        multiplier = sigma / l2
        if not 0 < multiplier < math.inf:
            raise ValueError(f"sigma {sigma:g} is too small for a sensitivity of {l2:g}")
        return Plan(sigma, multiplier, Cost(steps=Steps(multiplier, 1.0, parts)))
    epsilon = query.epsilon
    assert epsilon is not None
    return Plan(l1 * parts / epsilon, parts / epsilon, Cost(pure=epsilon))


def noisy(query: Query, data: torch.Tensor, how: Plan) -> torch.Tensor:
    """The query's aggregate of `data` (rows on its first dimension), clipped and noised."""
    lo, hi = query.bounds
    per_row = math.prod(data.shape[1:])  # not -1: that cannot reshape zero rows
    rows = data.detach().to(torch.float64).reshape(data.shape[0], per_row)
    rows = torch.nan_to_num(rows, nan=lo, posinf=hi, neginf=lo).clamp(lo, hi)
    generator = torch.Generator()
    generator.seed()  # the OS's entropy, never a seed a client knows

    def draw(shape: tuple[int, ...], scale: float) -> torch.Tensor:
        if query.mechanism == "gaussian":
            return torch.randn(shape, dtype=torch.float64, generator=generator) * scale
        one = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
        other = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
        return (one - other) * scale  # a Laplace variable: the difference of two exponentials

    count = torch.tensor(float(rows.shape[0]), dtype=torch.float64)
    if query.aggregate == "count":
        return count + draw((), how.noise)
    if query.aggregate == "histogram":
        counts = torch.histc(rows.reshape(-1), bins=query.bins, min=lo, max=hi)
        return counts + draw((query.bins,), how.noise)
    sums = rows.sum(0) + draw((rows.shape[1],), how.noise)
    if query.aggregate == "sum":
        return sums.reshape(data.shape[1:])
    count = count + draw((), how.count_noise)
    return (sums / count.clamp(min=1.0)).clamp(lo, hi).reshape(data.shape[1:])


@dataclass(frozen=True)
class Release:
    """A noisy value that may leave, its name and what it cost (`reason`), charged to
    `account`."""

    value: torch.Tensor
    name: str
    reason: str
    account: str


def release(
    data: Any, query: Any, budgets: Budgets, scientist: str, datasets: tuple[str, ...]
) -> Release:
    """Check the query (public), charge the scientist's budget for `datasets` (the published
    keys of `data`; refused, saying what is spent and what remains, if it would exceed the
    grant), then compute and noise the aggregate. Everything that can refuse comes before the
    data is read, so a refusal depends only on the query, the grant and earlier releases."""
    asked = Query.parse(query)
    if not datasets:
        raise TypeError("a DP release is of the owner's published data (duet.store[...])")
    if not isinstance(data, torch.Tensor) or data.dim() == 0 or data.is_complex():
        raise TypeError("a DP release takes a published real tensor with rows (its first dim)")
    per_row = math.prod(data.shape[1:])
    if per_row == 0:
        raise TypeError("the rows of this tensor hold no values")
    how = plan(asked, per_row)
    grant = budgets.grant_for(scientist, datasets)
    noise = f"sigma {asked.sigma:g}" if asked.sigma is not None else f"ε {asked.epsilon:g}"
    charge = budgets.charge(grant, how.cost, f"this {asked.mechanism} {asked.aggregate} ({noise})")
    try:
        value = noisy(asked, data, how)
    except Exception:
        log.exception("a DP release for %s was charged and could not be computed", scientist)
        raise ReleaseError("the release could not be computed (the owner's log says why)") from None
    lo, hi = asked.bounds
    spent = (
        f"{asked.mechanism} {asked.aggregate} of values clipped to [{lo:g}, {hi:g}], {noise}: "
        f"ε = {charge.epsilon:.4g} charged, {charge.total:.4g} of {grant.epsilon:g} spent "
        f"(δ = {grant.delta:g})"
    )
    reason = f"{asked.reason} ({spent})" if asked.reason else spent
    return Release(value, asked.name or f"dp {asked.aggregate}", reason, grant.account)


def query(
    aggregate: str,
    bounds: tuple[float, float] | None,
    *,
    mechanism: str = "gaussian",
    sigma: float | None = None,
    epsilon: float | None = None,
    bins: int = 10,
    name: str = "",
    reason: str = "",
) -> dict[str, Any]:
    """A query in its wire form (checked as the owner's node checks it)."""
    wire: dict[str, Any] = {
        "aggregate": aggregate,
        "bounds": list(bounds) if isinstance(bounds, tuple) else bounds,
        "mechanism": mechanism,
    }
    for key, value in (("sigma", sigma), ("epsilon", epsilon)):
        if value is not None:
            wire[key] = value
    wire.update(bins=bins, name=name, reason=reason)
    Query.parse(wire)
    return wire
