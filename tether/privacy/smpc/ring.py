"""The ring every share lives in: Z/2^64Z, held as int64 tensors whose wrap-around arithmetic
is the ring's (torch's int64 add, sub, mul and matmul wrap silently).

Randomness: ChaCha20's keystream from the `cryptography` library, so each element is uniform
over all 2^64 values (a share alone is then independent of the secret): under a fresh 256-bit
key from `os.urandom` for every draw (`random_ring`), or under a seed the crypto provider and a
party agreed, with a nonce used once (`expand`: both draw the same elements). torch's own
generators are not used: they are not meant to resist an observer who sees their outputs.

Fixed precision (PySyft's encoding): a real x is the ring element round(x * base^precision).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from tether.errors import TetherError
from tether.privacy.secagg.masks import keystream

RING_BITS = 64
DTYPE = torch.int64
# Encoded values must stay far below 2^63: products of two of them are truncated after the
# fact, and the two-party truncation is exact only while |value| << 2^63 (see `truncate`).
MAX_ENCODED = 2**52


class RingError(TetherError, ValueError):
    """A value that cannot be encoded, or a share that is not a ring element."""


Shape = torch.Size | tuple[int, ...] | list[int]


def _keystream(key: bytes, nonce: bytes, n: int) -> torch.Tensor:
    """n ring elements of ChaCha20's keystream under `key` and `nonce`, written straight into
    the tensor's memory."""
    out = torch.empty(n, dtype=DTYPE)
    if n:
        keystream(key, nonce, out.numpy().data.cast("B"))
    return out


def random_ring(shape: Shape) -> torch.Tensor:
    """Elements uniform over the 2^64 ring (int64), from a fresh ChaCha20 stream."""
    return _keystream(os.urandom(32), bytes(16), math.prod(shape)).reshape(tuple(shape))


def expand(seed: bytes, nonce: int, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Uniform ring elements of each shape in turn, from the stream of a 32-byte `seed` under
    `nonce` (at most once per seed): whoever holds the seed draws the same elements."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = _keystream(seed, bytes(8) + nonce.to_bytes(8, "little"), sum(sizes))
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]


def split(secret: torch.Tensor, n: int) -> list[torch.Tensor]:
    """`n` additive shares of an int64 tensor: n-1 uniform, the last makes them sum to it."""
    check_ring(secret, "the secret")
    if n < 2:
        raise RingError(f"sharing needs at least 2 shares, got {n}")
    shares = [random_ring(secret.shape) for _ in range(n - 1)]
    last = secret.clone()
    for share in shares:
        last -= share
    return [*shares, last]


def reconstruct(shares: list[torch.Tensor]) -> torch.Tensor:
    total = shares[0].clone(memory_format=torch.contiguous_format)  # to send as it is
    for share in shares[1:]:
        total += share
    return total


def check_ring(tensor: object, what: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != DTYPE:
        found = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise RingError(f"{what} must be an int64 tensor (the 2^64 ring), got {found}")


def scale_of(precision: int, base: int = 10) -> int:
    """base^precision, checked first (a peer names both): ints, base >= 2, precision >= 0, and
    a scale below 2^52 so that an encoded value stays exact in float64."""
    if (
        isinstance(precision, bool)
        or isinstance(base, bool)
        or not isinstance(precision, int)
        or not isinstance(base, int)
        or precision < 0
        or base < 2
        or precision * math.log2(base) >= 52
    ):
        raise RingError(
            "fixed precision takes an int base >= 2 and an int precision >= 0 with "
            f"base^precision below 2^52, got base {base!r} and precision {precision!r}"
        )
    return base**precision


def encode(value: torch.Tensor, precision: int, base: int = 10) -> torch.Tensor:
    """round(value * base^precision) as ring elements; refuses values too large to multiply."""
    scale = scale_of(precision, base)
    scaled = value.detach().to(torch.float64) * scale
    if scaled.numel() and not bool((scaled.abs() <= MAX_ENCODED).all()):  # NaN fails too
        raise RingError(
            f"a value of magnitude {float(value.abs().max()):.3g} does not fit fixed precision "
            f"{base}^{precision} (|value| * {scale} must stay below 2^52)"
        )
    return scaled.round().to(DTYPE)


def decode(value: torch.Tensor, precision: int, base: int = 10) -> torch.Tensor:
    """Ring elements back to floats (float32, torch's default)."""
    return (value.to(torch.float64) / scale_of(precision, base)).to(torch.get_default_dtype())


def truncate(share: torch.Tensor, divisor: int, party: int) -> torch.Tensor:
    """One party's share of x / divisor, from its share of x (two parties; SecureML's local
    truncation): party 0 rounds down, party 1 rounds its negation down. The result is within
    1 of x / divisor unless the shares straddle the ring's wrap, which happens with
    probability about |x| / 2^63: 2^-43 for the product of two values near 1 at precision 3
    (PySyft's default), 2^-23 for two values near 1000.

    Divided by numpy, which divides int64 by a scalar with a multiply and a shift
    (libdivide): 6-8x torch's integer division alone, 4-5% of a Part 12 bis training step
    (alternating the two in one process, 10 times each, twice)."""
    if divisor == 1:  # (numpy's floor(x / -1) overflows at -2^63)
        return share.clone()
    values = share.numpy()
    out = np.empty_like(values)  # (a 0-d result stays an array)
    if party == 0:
        np.floor_divide(values, divisor, out=out)
    else:  # -floor(-x / d), as floor(x / -d) negated: one pass fewer
        np.floor_divide(values, -divisor, out=out)
        np.negative(out, out=out)
    return torch.from_numpy(out)
