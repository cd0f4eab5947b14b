"""What a run of DP-SGD costs in (ε, δ): Opacus's RDP accountant over a history of steps.

A step is one noisy gradient on a Poisson-sampled batch: each sample joins it with probability
`rate`, its gradient clipped to norm C, Gaussian noise of standard deviation `noise * C` added
to the sum. Steps with the same (noise, rate) compose into one entry. Nothing here is
hand-written: the Rényi-DP bound of the subsampled Gaussian and its conversion to (ε, δ) are
Opacus's (`opacus.accountants.RDPAccountant`, its default orders).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Steps:
    """`count` DP-SGD steps at noise multiplier `noise` and Poisson sampling rate `rate`."""

    noise: float
    rate: float
    count: int


def compose(history: Iterable[Steps]) -> list[Steps]:
    """The history with the entries of equal (noise, rate) merged, in first-seen order."""
    merged: dict[tuple[float, float], int] = {}
    for s in history:
        merged[(s.noise, s.rate)] = merged.get((s.noise, s.rate), 0) + s.count
    return [Steps(noise, rate, count) for (noise, rate), count in merged.items()]


def epsilon(history: Sequence[Steps], delta: float) -> float:
    """ε of the whole history at `delta` (0 for no steps), by Opacus's RDP accountant."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    history = [s for s in history if s.count]
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # seconds to import: only when accounting

    accountant = RDPAccountant()
    accountant.history = [(s.noise, s.rate, s.count) for s in history]
    return float(accountant.get_epsilon(delta))
