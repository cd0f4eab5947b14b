"""What the parties and the crypto provider run on their nodes: registered in the op table
(`tether.smpc.*`) when this module is imported, so the node never imports SMPC.

Every function takes shares as plain int64 tensors, public keys as 32-byte uint8 tensors, and
only plain values (ints, shape lists, the names "mul" and "matmul") besides, so a peer's
call is checked like any other. The parties' functions are the local steps of the protocols in
`tether.privacy.smpc.protocols`.

Dealing: the provider and each party agree a 32-byte seed once (X25519 and HKDF, `seed_*`),
which each keeps in its crypto store (`_KEYS`), not among a client's objects.
Every piece of correlated randomness (a Beaver triple, a comparison's AND triples and random
bit, shares of zero) is then drawn from the seeds' streams under a nonce the scientist names
once: each party draws its own shares, and the provider, holding every seed, draws them all and
computes the one part a party cannot draw, the last party's share of the dependent value (c of
a triple). Only that correction travels, so the triples' shares never cross the wire, nor pass
the scientist who relays.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tether.ops import register
from tether.privacy.secagg.masks import agree
from tether.privacy.smpc import ring
from tether.privacy.smpc.limbs import ring_matmul

MAX_PARTIES = 16
_PRODUCTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": ring_matmul,
}


def _parties(n: Any) -> int:
    if type(n) is not int or not 2 <= n <= MAX_PARTIES:
        raise ValueError(f"the number of parties must be an int from 2 to {MAX_PARTIES}, got {n!r}")
    return n


def _shape(shape: Any) -> torch.Size:
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"a shape must be a list of non-negative ints, got {shape!r}")
    return torch.Size(shape)


def _product(op: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    found = _PRODUCTS.get(op) if isinstance(op, str) else None
    if found is None:
        raise ValueError(f"a Beaver triple is for 'mul' or 'matmul', not {op!r}")
    return found


# ---- dealing: seeds, and the provider's corrections ------------------------------------------

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


def _seed(handle: Any, nonce: Any) -> bytes:
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


def _triple_shapes(op: Any, shape_x: Any, shape_y: Any) -> tuple[torch.Size, ...]:
    """What each party draws for a triple: a, b, c (the last party a and b only)."""
    _product(op)
    return _triple_shapes_of(op, _shape(shape_x), _shape(shape_y))


@functools.lru_cache(maxsize=1024)
def _triple_shapes_of(op: str, shape_x: torch.Size, shape_y: torch.Size) -> tuple[torch.Size, ...]:
    """Worked out on meta tensors once per shapes (~0.1 ms each time otherwise: a training
    step asks ~100 times for the same few)."""
    x = torch.empty(shape_x, device="meta", dtype=ring.DTYPE)
    y = torch.empty(shape_y, device="meta", dtype=ring.DTYPE)
    out = torch.matmul(x, y) if op == "matmul" else x * y
    return x.shape, y.shape, out.shape


def _compare_shapes(shape: Any) -> list[torch.Size]:
    """What each party draws for a comparison: AND triples' a, b (one word per level), the
    random bit's XOR share; then c and the bit's additive share (not the last party)."""
    shape = _shape(shape)
    stacked = torch.Size([LEVELS, *shape])
    return [stacked, stacked, shape, stacked, shape]


def _draws(seeds: tuple, nonce: Any, shapes: list[torch.Size], free: int) -> list[list]:
    """Every party's draws from its seed (the provider holds them all, by handle): all of
    `shapes` but the last party's, which stops after the first `free`."""
    _parties(len(seeds))
    return [
        ring.expand(_seed(seed, nonce), nonce, shapes if i < len(seeds) - 1 else shapes[:free])
        for i, seed in enumerate(seeds)
    ]


def triple_correction(
    op: str, shape_x: list, shape_y: list, nonce: int, *seeds: Any
) -> torch.Tensor:
    """The last party's share of a Beaver triple's c = op(a, b), a and b the sums of every
    party's draws: c minus the other parties' drawn shares of it."""
    draws = _draws(seeds, nonce, _triple_shapes(op, shape_x, shape_y), 2)
    a, b = ring.reconstruct([d[0] for d in draws]), ring.reconstruct([d[1] for d in draws])
    c = _product(op)(a, b)
    for drawn in draws[:-1]:
        c -= drawn[2]
    return c


def compare_correction(shape: list, nonce: int, *seeds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 1's shares of a comparison's dependent randomness (two parties): the AND
    triples' c = a & b, and the random bit r = r_0 ^ r_1 as an additive share."""
    if len(seeds) != 2:
        raise ValueError(f"a comparison runs between two parties, got {len(seeds)} seeds")
    first, second = _draws(seeds, nonce, _compare_shapes(shape), 3)
    bit = (first[2] ^ second[2]) & 1
    return (first[0] ^ second[0]) & (first[1] ^ second[1]) ^ first[3], bit - first[4]


def zeros_correction(shape: list, nonce: int, *seeds: Any) -> torch.Tensor:
    """The last party's share of zero, the others' drawn from their seeds (`refresh()`)."""
    draws = _draws(seeds, nonce, [_shape(shape)], 0)
    return -ring.reconstruct([d[0] for d in draws[:-1]])


# ---- the parties --------------------------------------------------------------------------


def split(secret: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Shares of a tensor this worker holds (`ptr.fix_precision().share(...)`)."""
    return tuple(ring.split(secret, _parties(n)))


def encode(value: torch.Tensor, precision: int, base: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ring.RingError(f"encode takes a tensor, got {type(value).__name__}")
    return ring.encode(value, precision, base)


def beaver_open(
    seed: int, x: torch.Tensor, y: torch.Tensor, nonce: int, op: str, last: bool
) -> tuple[torch.Tensor, ...]:
    """A party's triple for op(x, y), drawn from its seed (a, b, and c unless it is the last
    party, whose c is the provider's correction), and its masked inputs x - a and y - b, to
    open: (x - a, y - b, a, b[, c])."""
    shapes = _triple_shapes(op, list(x.shape), list(y.shape))
    drawn = ring.expand(_seed(seed, nonce), nonce, shapes[:2] if last else shapes)
    return (x - drawn[0], y - drawn[1], *drawn)


def refresh_share(seed: int, x: torch.Tensor, nonce: int) -> torch.Tensor:
    """x plus this party's share of zero, drawn from its seed (all parties but the last)."""
    return x + ring.expand(_seed(seed, nonce), nonce, [x.shape])[0]


def beaver(
    c: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    delta: torch.Tensor,
    epsilon: torch.Tensor,
    op: str,
    first: bool,
    divisor: int = 1,
) -> torch.Tensor:
    """A party's share of op(x, y), from its triple shares and the opened delta = x - a and
    epsilon = y - b: c + op(delta, b) + op(a, epsilon), and op(delta, epsilon) once (party 0);
    divided by `divisor` as `truncate` does (two parties: `first` is party 0), which saves
    fixed-point products a call."""
    product = _product(op)
    _divisor(divisor)
    if first:
        share = c + product(delta, b + epsilon) + product(a, epsilon)
    else:
        share = c + product(delta, b) + product(a, epsilon)
    return share if divisor == 1 else ring.truncate(share, divisor, 0 if first else 1)


def _divisor(divisor: Any) -> None:
    if type(divisor) is not int or divisor < 1:
        raise ValueError(f"a divisor must be a positive int, got {divisor!r}")


def truncate(share: torch.Tensor, divisor: int, party: int) -> torch.Tensor:
    _divisor(divisor)
    return ring.truncate(share, divisor, int(party))


def compare_open(seed: int, x: torch.Tensor, nonce: int, last: bool) -> tuple[torch.Tensor, ...]:
    """A party's randomness for the sign of x (two parties), drawn from its seed: the AND
    triples' a, b (and c unless last: party 1's is the provider's correction), one word per
    level, and its XOR share r of the random bit (and its additive share unless last); with
    the masked inputs of the adder's first AND, party 0's share of x against party 1's (as
    XOR shares, each party holds its own and zeros for the other's):
    (d, e, a, b, r[, c, r_additive])."""
    drawn = ring.expand(
        _seed(seed, nonce), nonce, _compare_shapes(list(x.shape))[: 3 if last else 5]
    )
    a, b = drawn[0], drawn[1]
    zero = torch.zeros_like(x)
    d, e = (zero if last else x) ^ a[0], (x if last else zero) ^ b[0]
    return (d, e, a, b, drawn[2] & 1, *drawn[3:])


def _tree_masks(shift: int) -> tuple[int, int]:
    """The bit masks of one level of the carry tree (as int64 values): the heads of its blocks
    of 2 * shift bits (the positions t = -1 mod 2 * shift), and the same positions - shift."""
    heads = sum(1 << t for t in range(64) if t % (2 * shift) == 2 * shift - 1)
    return heads - (1 << 64), heads >> shift


_TREE = {shift: _tree_masks(shift) for shift in (1, 2, 4, 8, 16, 32)}
_TOP = -(1 << 63)  # bit 63 as an int64


def _tree_inputs(
    g: torch.Tensor, p: torch.Tensor, shift: int, first: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """At the first level, bit 63 becomes the identity of the carry operator (generate 0,
    propagate 1: party 0 holds the 1), so the tree's last head carries into bit 63."""
    if shift != 1:
        return g, p
    return g & ~_TOP, (p | _TOP) if first else (p & ~_TOP)


def _level(shift: Any) -> tuple[int, int]:
    found = _TREE.get(shift) if type(shift) is int else None
    if found is None:
        raise ValueError(f"a carry tree level's shift is 1, 2, 4, 8, 16 or 32, got {shift!r}")
    return found


def level_masks(
    g: torch.Tensor,
    p: torch.Tensor,
    shift: int,
    a: torch.Tensor,
    b: torch.Tensor,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked inputs of one level of the carry tree, both of its ANDs in one word: at each
    head t, P(t) & G(t - shift); at t - shift (a bit the level leaves free), P(t) & P(t - shift).
    `a` and `b` are the comparison's AND triples, a word per level (`compare_open`)."""
    heads, below = _level(shift)
    g, p = _tree_inputs(g, p, shift, first)
    left = (p & heads) | ((p >> shift) & below)
    right = ((g << shift) & heads) | (p & below)
    return left ^ a[shift.bit_length()], right ^ b[shift.bit_length()]


def _and(
    c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, e: torch.Tensor, first: bool
) -> torch.Tensor:
    """A party's XOR share of x & y from the opened d = x ^ a and e = y ^ b."""
    z = c ^ (d & b) ^ (e & a)
    return z ^ (d & e) if first else z


def and_close(
    c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, e: torch.Tensor, first: bool
) -> torch.Tensor:
    """The adder's first AND (generate: x_0 & x_1), by the triple of level 0."""
    return _and(c[0], a[0], b[0], d, e, first)


def level_close(
    g: torch.Tensor,
    p: torch.Tensor,
    shift: int,
    c: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    d: torch.Tensor,
    e: torch.Tensor,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A party's shares of the level's (G, P) at its heads: G ^ P & G(t - shift), and
    P & P(t - shift) moved up from the free bit below."""
    heads, below = _level(shift)
    g, _ = _tree_inputs(g, p, shift, first)
    k = shift.bit_length()
    z = _and(c[k], a[k], b[k], d, e, first)
    return g ^ (z & heads), (z & below) << shift


def msb_bit(x: torch.Tensor, g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The party's XOR share of the sign bit of x (bit 63 of x_0 ^ x_1 ^ the carry into it,
    which the tree leaves at bit 63 of G), masked by its XOR share of the provider's random
    bit r, ready to open."""
    return (((x ^ g) >> 63) & 1) ^ r


def bit_to_ring(r: torch.Tensor, opened: torch.Tensor, first: bool) -> torch.Tensor:
    """From the opened c = bit ^ r and an additive share of r, an additive share of the bit:
    bit = c + r - 2cr."""
    share = r - 2 * opened * r
    return share + opened if first else share


def _shares_only(step: Callable[..., Any]) -> Callable[..., Any]:
    """A party's local step, taking shares: every tensor argument must be a ring element
    (int64) and its `first` or `last` flag a bool, whatever a peer sends."""

    names = list(inspect.signature(step).parameters)
    flag = "first" if "first" in names else "last" if "last" in names else None
    at = names.index(flag) if flag else len(names)

    @functools.wraps(step)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.dtype != ring.DTYPE:
                raise ring.RingError(
                    f"{step.__name__} takes shares in the 2^64 ring (int64), got {value.dtype}"
                )
        value = args[at] if at < len(args) else kwargs.get(flag or "", False)
        if type(value) is not bool:
            raise ValueError(f"{step.__name__}'s {flag} must be true or false, got {value!r}")
        return step(*args, **kwargs)

    return checked


# ---- guards: the elements each call allocates, bounded before it runs ----------------------


def _numel(shape: Any) -> int:
    return _shape(shape).numel()


def _triple_size(args: tuple, kwargs: dict) -> int:
    op, shape_x, shape_y, _, *seeds = args
    n = _parties(len(seeds))
    return 2 * n * sum(s.numel() for s in _guessed_shapes(op, shape_x, shape_y))


def _guessed_shapes(op: Any, shape_x: Any, shape_y: Any) -> tuple[torch.Size, ...]:
    """A triple's shapes for a guard, whatever `op` is (the op itself refuses a wrong one)."""
    return _triple_shapes_of(
        "matmul" if op == "matmul" else "mul", _shape(shape_x), _shape(shape_y)
    )


def _open_size(args: tuple, kwargs: dict) -> int:
    _, x, y, _, op, _ = args
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return 0
    return 2 * sum(s.numel() for s in _guessed_shapes(op, list(x.shape), list(y.shape)))


def _compare_size(args: tuple, kwargs: dict) -> int:
    shape = args[0]
    return 5 * LEVELS * _numel(shape)


def _compare_open_size(args: tuple, kwargs: dict) -> int:
    x = args[1]
    return 3 * LEVELS * x.numel() if isinstance(x, torch.Tensor) else 0


def _zeros_size(args: tuple, kwargs: dict) -> int:
    shape, _, *seeds = args
    return (_parties(len(seeds)) + 1) * _numel(shape)


def _split_size(args: tuple, kwargs: dict) -> int:
    secret, n = args
    return 2 * _parties(n) * (secret.numel() if isinstance(secret, torch.Tensor) else 0)


def _beaver_size(args: tuple, kwargs: dict) -> int:
    c = args[0]
    return 4 * c.numel() if isinstance(c, torch.Tensor) else 0


PATHS = {
    name: register(f"tether.smpc.{name}", fn, guard=guard).path
    for name, fn, guard in (
        ("seed_key", seed_key, None),
        ("seed_pair", seed_pair, None),
        ("seed_agree", seed_agree, None),
        ("forget_key", forget_key, None),
        ("triple_correction", triple_correction, _triple_size),
        ("compare_correction", compare_correction, _compare_size),
        ("zeros_correction", zeros_correction, _zeros_size),
        ("split", split, _split_size),
        ("encode", encode, None),
        ("beaver_open", _shares_only(beaver_open), _open_size),
        ("compare_open", _shares_only(compare_open), _compare_open_size),
        ("refresh_share", _shares_only(refresh_share), None),
        ("beaver", _shares_only(beaver), _beaver_size),
        ("truncate", _shares_only(truncate), None),
        ("level_masks", _shares_only(level_masks), None),
        ("and_close", _shares_only(and_close), None),
        ("level_close", _shares_only(level_close), None),
        ("msb_bit", _shares_only(msb_bit), None),
        ("bit_to_ring", _shares_only(bit_to_ring), None),
    )
}
