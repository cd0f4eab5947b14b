"""Updates as vectors over the ring Z_(2^32): what a worker masks and the coordinator sums.

A worker's contribution is its weighted move `r * (w - global)`, entry by entry of the model's
state, and then its weight `r` as one more coordinate, so that only the sum of the weights is
revealed too. `r = min(weight, max_weight) / max_weight` lies in (0, 1]: the weight (a sample
count, or 1) over a public bound on it. Each coordinate is clipped to its range (`clip` for
floating-point entries, `count_clip` for integer ones such as BatchNorm's counter, 1 for the
weight) and written in fixed point, `round(value * scale) mod 2^32`, with
`scale = (2^31 - clients) / (clients * range)`: the sum over up to `clients` workers then stays
inside (-2^31, 2^31), and the signed reading of the ring sum is exact. Each worker's rounding
error is at most `0.5 / scale`, about `clients * range * 2^-32` per coordinate; a sum of `n`
workers is off by at most `n` times that (docs/secure-aggregation.md states the numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

RING_BITS = 32
DEFAULT_CLIP = 8.0
DEFAULT_COUNT_CLIP = 2.0**16
MAX_CLIENTS = 4096


@dataclass(frozen=True)
class Encoding:
    """How one round writes updates into the ring: the ranges, the bound on a worker's
    weight and the most workers whose vectors are summed (`clients`)."""

    clients: int
    max_weight: float
    clip: float = DEFAULT_CLIP
    count_clip: float = DEFAULT_COUNT_CLIP

    def __post_init__(self) -> None:
        # at most 4,096: a worker's work grows with the square of it (Shamir sharing)
        if type(self.clients) is not int or not 1 <= self.clients <= MAX_CLIENTS:
            raise ValueError(
                f"clients must be an integer in [1, {MAX_CLIENTS}], got {self.clients!r}"
            )
        for name in ("max_weight", "clip", "count_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not 0 < value < 2.0**64:
                raise ValueError(f"{name} must be positive and finite, got {value!r}")

    def scale(self, bound: float) -> float:
        """Ring units per unit of a coordinate whose magnitude is at most `bound`."""
        return (2**31 - self.clients) / (self.clients * bound)

    def error(self, bound: float) -> float:
        """The most one worker's encoded coordinate differs from its clipped value."""
        return 0.5 / self.scale(bound)

    def range_of(self, value: torch.Tensor) -> float:
        return self.clip if value.is_floating_point() else self.count_clip

    def length(self, state: Mapping[str, torch.Tensor]) -> int:
        """Coordinates of a vector for this state: every entry's, then the weight."""
        return sum(v.numel() for v in state.values()) + 1

    def encode(
        self,
        trained: Mapping[str, torch.Tensor],
        global_state: Mapping[str, torch.Tensor],
        weight: float,
    ) -> np.ndarray:
        """The worker's vector: `r * clip(trained - global)` per entry, then `r`."""
        if trained.keys() != global_state.keys():
            raise ValueError("the trained state and the global state have different entries")
        ratio = min(float(weight), self.max_weight) / self.max_weight
        if not ratio > 0:
            raise ValueError(f"a worker's weight must be positive, got {weight!r}")
        out = np.empty(self.length(global_state), dtype=np.uint32)
        start = 0
        for key, base in global_state.items():
            value = trained[key]
            if value.shape != base.shape:
                raise ValueError(
                    f"entry {key!r} has shape {list(value.shape)}, not {list(base.shape)}"
                )
            bound = self.range_of(base)
            move = value.detach().double().flatten().numpy() - base.double().flatten().numpy()
            if not np.isfinite(move).all():
                raise ValueError(f"entry {key!r} of the trained state is not finite")
            stop = start + base.numel()
            out[start:stop] = _fixed(np.clip(move, -bound, bound) * ratio, self.scale(bound))
            start = stop
        out[start] = _fixed(np.array([ratio]), self.scale(1.0))[0]
        return out

    def decode(
        self, total: np.ndarray, global_state: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], float]:
        """The summed moves (float64, per entry) and the summed weight, in the units of the
        workers' weights (`max_weight` times the ring's), from the ring sum."""
        if total.dtype != np.uint32 or total.shape != (self.length(global_state),):
            raise ValueError("the sum has the wrong type or length for this model")
        signed = total.view(np.int32).astype(np.float64)
        moves: dict[str, torch.Tensor] = {}
        start = 0
        for key, base in global_state.items():
            stop = start + base.numel()
            scale = self.scale(self.range_of(base)) / self.max_weight
            moves[key] = torch.from_numpy(signed[start:stop] / scale).reshape(base.shape)
            start = stop
        weight = float(signed[start]) / self.scale(1.0) * self.max_weight
        return moves, weight


def _fixed(values: np.ndarray, scale: float) -> np.ndarray:
    """`round(values * scale)` as ring elements (two's complement)."""
    return np.rint(values * scale).astype(np.int64).astype(np.uint32)
