"""Dealing: the correlated randomness the protocols consume, drawn from seeds.

The provider and each party agree a 32-byte seed once (X25519 and HKDF-SHA256 from
`cryptography`, `seed_*`), which each keeps in its crypto store (`_KEYS`), not among a client's
objects. Every piece of correlated randomness (a Beaver triple, a comparison's AND triples and
random bit, shares of zero) is then drawn from the seeds' streams under a nonce the scientist
names once: each party draws its own shares, and the provider, holding every seed, draws them
all and computes the one part a party cannot draw, the last party's share of the dependent
value (c of a triple). Only that correction travels, so the triples' shares never cross the
wire, nor pass the scientist who relays. The provider's functions are registered as ops in
`ops.py`, with the parties' steps that draw.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tether.privacy.secagg.masks import agree
from tether.privacy.smpc import ring
from tether.privacy.smpc.limbs import ring_matmul

MAX_PARTIES = 16
_PRODUCTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": ring_matmul,
}


def check_parties(n: Any) -> int:
    if type(n) is not int or not 2 <= n <= MAX_PARTIES:
        raise ValueError(f"the number of parties must be an int from 2 to {MAX_PARTIES}, got {n!r}")
    return n


def check_shape(shape: Any) -> torch.Size:
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"a shape must be a list of non-negative ints, got {shape!r}")
    return torch.Size(shape)


def product(op: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    found = _PRODUCTS.get(op) if isinstance(op, str) else None
    if found is None:
        raise ValueError(f"a Beaver triple is for 'mul' or 'matmul', not {op!r}")
    return found


# ---- seeds and the crypto store ----------------------------------------------------------------

LEVELS = 7  # AND triples a comparison uses: its first AND, then the carry tree's six levels
MAX_KEYS = 65_536  # in the crypto store at once (the oldest goes first)
_PURPOSE = b"smpc dealing"


@dataclass
class _Key:
    """A key in the crypto store: a seed (or the provider's private key while it agrees), and
    the last nonce drawn under it: nonces only go up, so no draw repeats."""

    secret: bytes
    nonce: int = 0


# The crypto store: keys by handle, apart from the objects clients store (PySyft kept its
# crypto primitives apart too), so a client can neither fetch nor list them, only name them in
# a dealing op. The scientist picks each handle at random (63 bits); a handle is a capability.
# Workers in one process share it, as they share that process's memory.
_KEYS: dict[int, _Key] = {}


def _new_key(handle: Any, secret: bytes) -> None:
    if type(handle) is not int or not 0 < handle < 2**63 or handle in _KEYS:
        raise ValueError(
            f"a new key's handle must be an unused int from 1 to 2^63 - 1, got {handle!r}"
        )
    while len(_KEYS) >= MAX_KEYS:
        del _KEYS[next(iter(_KEYS))]
    _KEYS[handle] = _Key(secret)


def _key(handle: Any) -> _Key:
    found = _KEYS.get(handle) if type(handle) is int else None
    if found is None:
        raise ValueError(f"no dealing key has handle {handle!r} on this worker")
    return found


def seed_for_draw(handle: Any, nonce: Any) -> bytes:
    """The seed under `handle`, for one draw under `nonce` (above every nonce drawn before)."""
    key = _key(handle)
    if type(nonce) is not int or not key.nonce < nonce < 2**63:
        raise ValueError(
            f"a dealing nonce must be an int above the last one drawn ({key.nonce}), got {nonce!r}"
        )
    key.nonce = nonce
    return key.secret


def _public(value: Any) -> bytes:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.numel() != 32:
        raise ValueError("a public key is a uint8 tensor of 32 bytes")
    return value.numpy().tobytes()


def _public_tensor(key: X25519PrivateKey) -> torch.Tensor:
    return torch.frombuffer(bytearray(key.public_key().public_bytes_raw()), dtype=torch.uint8)


def seed_key(handle: int) -> torch.Tensor:
    """The provider's X25519 key pair: the private key kept under `handle`, the public one
    returned, to agree a seed with each party."""
    private = X25519PrivateKey.generate()
    _new_key(handle, private.private_bytes_raw())
    return _public_tensor(private)


def seed_pair(handle: int, provider_public: torch.Tensor) -> torch.Tensor:
    """A party's seed, agreed with the provider's public key and kept under `handle`; returns
    the party's public key (all the provider needs to derive the same seed)."""
    private = X25519PrivateKey.generate()
    _new_key(handle, agree(private, _public(provider_public), _PURPOSE, b""))
    return _public_tensor(private)


def seed_agree(handle: int, key_handle: int, party_public: torch.Tensor) -> torch.Tensor:
    """The provider's copy of a party's seed, kept under `handle` (from its private key under
    `key_handle`). Returns nothing of it: an empty tensor."""
    private = X25519PrivateKey.from_private_bytes(_key(key_handle).secret)
    _new_key(handle, agree(private, _public(party_public), _PURPOSE, b""))
    return torch.empty(0, dtype=torch.uint8)


def forget_key(handle: int) -> torch.Tensor:
    """Drop a key (the provider's private key, once every party has its seed)."""
    _key(handle)
    del _KEYS[handle]
    return torch.empty(0, dtype=torch.uint8)


# ---- the draws, and the provider's corrections -------------------------------------------------


def triple_shapes(op: Any, shape_x: Any, shape_y: Any) -> tuple[torch.Size, ...]:
    """What each party draws for a triple: a, b, c (the last party a and b only)."""
    product(op)
    return triple_shapes_of(op, check_shape(shape_x), check_shape(shape_y))


@functools.lru_cache(maxsize=1024)
def triple_shapes_of(op: str, shape_x: torch.Size, shape_y: torch.Size) -> tuple[torch.Size, ...]:
    """Worked out on meta tensors once per shapes (~0.1 ms each time otherwise: a training
    step asks ~100 times for the same few)."""
    x = torch.empty(shape_x, device="meta", dtype=ring.DTYPE)
    y = torch.empty(shape_y, device="meta", dtype=ring.DTYPE)
    out = torch.matmul(x, y) if op == "matmul" else x * y
    return x.shape, y.shape, out.shape


def compare_shapes(shape: Any) -> list[torch.Size]:
    """What each party draws for a comparison: AND triples' a, b (one word per level), the
    random bit's XOR share; then c and the bit's additive share (not the last party)."""
    shape = check_shape(shape)
    stacked = torch.Size([LEVELS, *shape])
    return [stacked, stacked, shape, stacked, shape]


def _draws(seeds: tuple, nonce: Any, shapes: Sequence[torch.Size], free: int) -> list[list]:
    """Every party's draws from its seed (the provider holds them all, by handle): all of
    `shapes` but the last party's, which stops after the first `free`."""
    check_parties(len(seeds))
    return [
        ring.expand(
            seed_for_draw(seed, nonce), nonce, shapes if i < len(seeds) - 1 else shapes[:free]
        )
        for i, seed in enumerate(seeds)
    ]


def triple_correction(
    op: str, shape_x: list, shape_y: list, nonce: int, *seeds: Any
) -> torch.Tensor:
    """The last party's share of a Beaver triple's c = op(a, b), a and b the sums of every
    party's draws: c minus the other parties' drawn shares of it."""
    draws = _draws(seeds, nonce, triple_shapes(op, shape_x, shape_y), 2)
    a, b = ring.reconstruct([d[0] for d in draws]), ring.reconstruct([d[1] for d in draws])
    c = product(op)(a, b)
    for drawn in draws[:-1]:
        c -= drawn[2]
    return c


def compare_correction(shape: list, nonce: int, *seeds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 1's shares of a comparison's dependent randomness (two parties): the AND
    triples' c = a & b, and the random bit r = r_0 ^ r_1 as an additive share."""
    if len(seeds) != 2:
        raise ValueError(f"a comparison runs between two parties, got {len(seeds)} seeds")
    first, second = _draws(seeds, nonce, compare_shapes(shape), 3)
    bit = (first[2] ^ second[2]) & 1
    return (first[0] ^ second[0]) & (first[1] ^ second[1]) ^ first[3], bit - first[4]


def zeros_correction(shape: list, nonce: int, *seeds: Any) -> torch.Tensor:
    """The last party's share of zero, the others' drawn from their seeds (`refresh()`)."""
    draws = _draws(seeds, nonce, [check_shape(shape)], 0)
    return -ring.reconstruct([d[0] for d in draws[:-1]])
