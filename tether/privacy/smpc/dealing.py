"""Dealing: the correlated randomness the protocols consume, drawn from seeds.

The provider and each party agree a 32-byte seed once (X25519 and HKDF-SHA256 from
`cryptography`, `seed_*`), which each keeps as a `DealingKey` in the scientist's store on its
worker: opaque, never sent. Every piece of correlated randomness (a Beaver triple, a
comparison's AND triples and random bit, shares of zero) is then drawn from the seeds'
streams under a nonce the scientist names once: each party draws its own shares, and the
provider, holding every seed, draws them all and computes the one part a party cannot draw,
the last party's share of the dependent value (c of a triple). Only that correction travels,
so the triples' shares never cross the wire, nor pass the scientist who relays. These are
registered as ops in `ops.py`, with the parties' steps that draw.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tether.ops import OpState
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


# ---- seeds ---------------------------------------------------------------------------------

LEVELS = 7  # AND triples a comparison uses: its first AND, then the carry tree's six levels
_PURPOSE = b"smpc dealing"


class DealingKey(OpState):
    """A seed a party shares with the provider (or the provider's private key while it
    agrees), kept in the client's store on the worker, as secure aggregation keeps its
    MaskingClient: opaque (no way to read or send it; the node refuses a Get of it), freed
    with the client's other objects, and counted against its limits. It remembers the last
    nonce drawn under it: nonces only go up, so no draw repeats."""

    __slots__ = ("_nonce", "_secret")

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._nonce = 0

    def __repr__(self) -> str:
        return "DealingKey()"

    def private_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self._secret)

    def seed_for(self, nonce: Any) -> bytes:
        """The seed, for one draw under `nonce` (above every nonce drawn before)."""
        if type(nonce) is not int or not self._nonce < nonce < 2**63:
            raise ValueError(
                f"a dealing nonce must be an int above the last one drawn ({self._nonce}), "
                f"got {nonce!r}"
            )
        self._nonce = nonce
        return self._secret


def key_of(value: Any) -> DealingKey:
    if not isinstance(value, DealingKey):
        raise TypeError(f"a dealing key was expected, got {type(value).__name__}")
    return value


def _public(value: Any) -> bytes:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.numel() != 32:
        raise ValueError("a public key is a uint8 tensor of 32 bytes")
    return value.numpy().tobytes()


def _public_tensor(key: X25519PrivateKey) -> torch.Tensor:
    return torch.frombuffer(bytearray(key.public_key().public_bytes_raw()), dtype=torch.uint8)


def seed_key() -> tuple[DealingKey, torch.Tensor]:
    """The provider's X25519 key pair: the private key kept, the public one to fetch, to agree
    a seed with each party."""
    private = X25519PrivateKey.generate()
    return DealingKey(private.private_bytes_raw()), _public_tensor(private)


def seed_pair(provider_public: torch.Tensor) -> tuple[DealingKey, torch.Tensor]:
    """A party's seed, agreed with the provider's public key and kept; and the party's public
    key, to fetch (all the provider needs to derive the same seed)."""
    private = X25519PrivateKey.generate()
    seed = agree(private, _public(provider_public), _PURPOSE, b"")
    return DealingKey(seed), _public_tensor(private)


def seed_agree(private: DealingKey, party_public: torch.Tensor) -> DealingKey:
    """The provider's copy of a party's seed, from its private key."""
    return DealingKey(agree(key_of(private).private_key(), _public(party_public), _PURPOSE, b""))


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


def _draws(keys: tuple, nonce: Any, shapes: Sequence[torch.Size], free: int) -> list[list]:
    """Every party's draws from its seed (the provider holds them all): all of `shapes` but
    the last party's, which stops after the first `free`."""
    check_parties(len(keys))
    last = len(keys) - 1
    return [
        ring.expand(key_of(key).seed_for(nonce), nonce, shapes if i < last else shapes[:free])
        for i, key in enumerate(keys)
    ]


def triple_correction(
    op: str,
    shape_x: list,
    shape_y: list,
    nonce: int,
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    same: bool,
    *keys: Any,
) -> tuple[torch.Tensor, ...]:
    """The last party's share of a Beaver triple's c = op(a, b): c minus the other parties'
    drawn shares of it. A mask given (`a`, `b`: kept from an earlier triple, see
    `beaver_open`) is used again; the others are the sums of every party's draws, and are
    returned after the correction, for the provider to keep: (correction, a, b), less what
    was given. `same`: b is a (y = x)."""
    shapes = triple_shapes(op, shape_x, shape_y)
    check_operands(a, b, shapes, same)
    fresh = [shapes[0]] * (a is None) + [shapes[1]] * (b is None and not same)  # to draw
    draws = _draws(keys, nonce, [*fresh, shapes[2]], len(fresh))
    drawn = [ring.reconstruct([d[k] for d in draws]) for k in range(len(fresh))]
    a = drawn[0] if a is None else a
    b = a if same else drawn[-1] if b is None else b
    c = product(op)(a, b)
    for party in draws[:-1]:
        c -= party[-1]
    return (c, *drawn)


def check_operands(x: Any, y: Any, shapes: tuple[torch.Size, ...], same: Any) -> None:
    """A triple's operands as a peer gives them (a party's shares to mask, or the masks the
    provider kept): each absent or an int64 tensor of the shape the call states. And its
    `same` flag (y is x, masked once): a bool, true only with no y given and the shapes alike."""
    if type(same) is not bool or (same and (y is not None or shapes[0] != shapes[1])):
        raise ValueError(
            "`same` must be true or false, and true only for a second operand that is the "
            f"first (not given), got {same!r}"
        )
    for value, shape in ((x, shapes[0]), (y, shapes[1])):
        if value is not None and not (
            isinstance(value, torch.Tensor) and value.dtype == ring.DTYPE and value.shape == shape
        ):
            raise ring.RingError(
                f"an operand or kept mask must be an int64 tensor of shape {list(shape)}"
            )


def compare_correction(shape: list, nonce: int, *keys: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 1's shares of a comparison's dependent randomness (two parties): the AND
    triples' c = a & b, and the random bit r = r_0 ^ r_1 as an additive share."""
    if len(keys) != 2:
        raise ValueError(f"a comparison runs between two parties, got {len(keys)} seeds")
    first, second = _draws(keys, nonce, compare_shapes(shape), 3)
    bit = (first[2] ^ second[2]) & 1
    return (first[0] ^ second[0]) & (first[1] ^ second[1]) ^ first[3], bit - first[4]


def zeros_correction(shape: list, nonce: int, *keys: Any) -> torch.Tensor:
    """The last party's share of zero, the others' drawn from their seeds (`refresh()`)."""
    draws = _draws(keys, nonce, [check_shape(shape)], 0)
    return -ring.reconstruct([d[0] for d in draws[:-1]])
