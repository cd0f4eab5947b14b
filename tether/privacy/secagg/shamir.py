"""Shamir secret sharing (Shamir 1979) of 32-byte secrets over the prime field GF(2^521 - 1).

A secret is the constant term of a random polynomial of degree `threshold - 1`; share `x` is
the polynomial at `x` (x = 1, 2, ...). Any `threshold` shares give the secret back by Lagrange
interpolation at 0; fewer say nothing about it (every secret fits them equally well). The
Mersenne prime 2^521 - 1 is larger than any 256-bit secret, so a secret is one field element
and a share is one too, written as 66 big-endian bytes.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` shares of `secret` (shares at x = 1 .. count), any `threshold` of which
    reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= count:
        raise ValueError(f"need 1 <= threshold <= count, got {threshold} and {count}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, count + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "big"))
    return shares


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least `threshold` shares `{x: share}`; ValueError with fewer or
    malformed ones. (More than `threshold` are fine: the first `threshold` by x are used.)"""
    if len(shares) < threshold:
        raise ValueError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs = tuple(sorted(shares)[:threshold])
    total = 0
    for x, weight in zip(xs, lagrange_at_zero(xs), strict=True):
        total += weight * element(shares[x])
    secret = total % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ValueError("the shares do not come from one secret of this size")
    return secret.to_bytes(SECRET_BYTES, "big")


def element(share: bytes) -> int:
    """A share's field element; ValueError if it is not one."""
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise ValueError("a share must be below the field's prime")
    return value


@functools.lru_cache(maxsize=64)
def lagrange_at_zero(xs: Sequence[int]) -> tuple[int, ...]:
    """The weights `l_i` with `f(0) = sum l_i f(x_i)` for any polynomial of degree < len(xs)
    (cached: a round reconstructs many secrets from the same share holders)."""
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError(f"share positions must be distinct and in (0, p), got {xs}")
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)
