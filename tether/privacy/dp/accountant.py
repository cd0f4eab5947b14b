"""What a run of DP-SGD costs in (ε, δ): Opacus's RDP accountant over a history of steps.

A step is one noisy gradient on a Poisson-sampled batch: each sample joins it with probability
`rate`, its gradient clipped to norm C, Gaussian noise of standard deviation `noise * C` added
to the sum. Steps with the same (noise, rate) compose into one entry. Nothing here is
hand-written: the Rényi-DP bound of the subsampled Gaussian and its conversion to (ε, δ) are
Opacus's (`opacus.accountants.analysis.rdp`, at `RDPAccountant`'s default orders, as its
`RDPAccountant.get_epsilon` computes them; tests/test_dp.py checks the two agree).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


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
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    rdp = sum(s.count * _rdp_of_one_step(s.noise, s.rate) for s in history)
    eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


@functools.cache
def _rdp_of_one_step(noise: float, rate: float) -> np.ndarray:
    """Opacus's RDP of one step at each of its default orders. A step's RDP is linear in the
    number of steps (`compute_rdp(steps=n)` is n times this), so it is computed once per
    (noise, rate): Opacus's series take up to a second per call, and a worker accounts for
    every fit."""
    from opacus.accountants import RDPAccountant  # seconds to import: only when accounting
    from opacus.accountants.analysis import rdp as analysis

    one = analysis.compute_rdp(
        q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    one.flags.writeable = False  # shared by every call
    return one
