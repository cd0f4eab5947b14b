"""What the parties and the crypto provider run on their nodes: registered in the op table
(`tether.smpc.*`) when this module is imported, so the node never imports SMPC.

Every function takes shares as plain int64 tensors, public keys as 32-byte uint8 tensors,
dealing keys as the opaque objects its worker keeps (`dealing.DealingKey`), and only plain
values (ints, shape lists, the names "mul" and "matmul") besides, so a peer's call is checked
like any other. The parties' functions are the local steps of the protocols in
`tether.privacy.smpc.protocols`.

The dealing ops (seeds, the provider's corrections) live in `dealing.py`; the parties' steps
that draw from a seed are here with the rest of their steps.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from tether.ops import register
from tether.privacy.smpc import ring
from tether.privacy.smpc.dealing import (
    LEVELS,
    DealingKey,
    check_operands,
    check_parties,
    check_shape,
    compare_correction,
    compare_shapes,
    product,
    seed_agree,
    seed_key,
    seed_pair,
    triple_correction,
    triple_shapes,
    triple_shapes_of,
    zeros_correction,
)

# ---- the parties --------------------------------------------------------------------------


def split(secret: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Shares of a tensor this worker holds (`ptr.fix_precision().share(...)`)."""
    return tuple(ring.split(secret, check_parties(n)))


def encode(value: torch.Tensor, precision: int, base: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ring.RingError(f"encode takes a tensor, got {type(value).__name__}")
    return ring.encode(value, precision, base)


def beaver_open(
    key: DealingKey,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    nonce: int,
    op: str,
    shape_x: list,
    shape_y: list,
    same: bool,
    last: bool,
) -> tuple[torch.Tensor, ...]:
    """A party's part of a Beaver triple for op(x, y), drawn from its seed: a mask for each
    operand given (None: the operand was masked before, and its mask is used again; `same`:
    y is x, masked once), and c unless it is the last party (whose c is the provider's
    correction). Returns the masked operands to open, then their masks, then c:
    (x - a, y - b, a, b, c), less what is not drawn."""
    shapes = triple_shapes(op, shape_x, shape_y)
    check_operands(x, y, shapes, same)
    operands = [(v, s) for v, s in ((x, shapes[0]), (y, shapes[1])) if v is not None]
    drawn = ring.expand(
        key.seed_for(nonce), nonce, [s for _, s in operands] + ([] if last else [shapes[2]])
    )
    masked = [value - mask for (value, _), mask in zip(operands, drawn, strict=False)]
    return (*masked, *drawn)


def refresh_share(key: DealingKey, x: torch.Tensor, nonce: int) -> torch.Tensor:
    """x plus this party's share of zero, drawn from its seed (all parties but the last)."""
    return x + ring.expand(key.seed_for(nonce), nonce, [x.shape])[0]


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
    multiply = product(op)
    _divisor(divisor)
    if first:
        share = c + multiply(delta, b + epsilon) + multiply(a, epsilon)
    else:
        share = c + multiply(delta, b) + multiply(a, epsilon)
    return share if divisor == 1 else ring.truncate(share, divisor, 0 if first else 1)


def _divisor(divisor: Any) -> None:
    if type(divisor) is not int or divisor < 1:
        raise ValueError(f"a divisor must be a positive int, got {divisor!r}")


def truncate(share: torch.Tensor, divisor: int, party: int) -> torch.Tensor:
    _divisor(divisor)
    return ring.truncate(share, divisor, int(party))


def compare_open(
    key: DealingKey, x: torch.Tensor, nonce: int, last: bool
) -> tuple[torch.Tensor, ...]:
    """A party's randomness for the sign of x (two parties), drawn from its seed: the AND
    triples' a, b (and c unless last: party 1's is the provider's correction), one word per
    level, and its XOR share r of the random bit (and its additive share unless last); with
    the masked inputs of the adder's first AND, party 0's share of x against party 1's (as
    XOR shares, each party holds its own and zeros for the other's):
    (d, e, a, b, r[, c, r_additive])."""
    drawn = ring.expand(
        key.seed_for(nonce), nonce, compare_shapes(list(x.shape))[: 3 if last else 5]
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
    return check_shape(shape).numel()


def _triple_size(args: tuple, kwargs: dict) -> int:
    op, shape_x, shape_y, _, _, _, _, *seeds = args
    n = check_parties(len(seeds))
    return 2 * n * sum(s.numel() for s in _guessed_shapes(op, shape_x, shape_y))


def _guessed_shapes(op: Any, shape_x: Any, shape_y: Any) -> tuple[torch.Size, ...]:
    """A triple's shapes for a guard, whatever `op` is (the op itself refuses a wrong one)."""
    return triple_shapes_of(
        "matmul" if op == "matmul" else "mul", check_shape(shape_x), check_shape(shape_y)
    )


def _open_size(args: tuple, kwargs: dict) -> int:
    _, _, _, _, op, shape_x, shape_y, *_ = args
    return 2 * sum(s.numel() for s in _guessed_shapes(op, shape_x, shape_y))


def _compare_size(args: tuple, kwargs: dict) -> int:
    shape = args[0]
    return 5 * LEVELS * _numel(shape)


def _compare_open_size(args: tuple, kwargs: dict) -> int:
    x = args[1]
    return 3 * LEVELS * x.numel() if isinstance(x, torch.Tensor) else 0


def _zeros_size(args: tuple, kwargs: dict) -> int:
    shape, _, *seeds = args
    return (check_parties(len(seeds)) + 1) * _numel(shape)


def _split_size(args: tuple, kwargs: dict) -> int:
    secret, n = args
    return 2 * check_parties(n) * (secret.numel() if isinstance(secret, torch.Tensor) else 0)


def _beaver_size(args: tuple, kwargs: dict) -> int:
    c = args[0]
    return 4 * c.numel() if isinstance(c, torch.Tensor) else 0


_KEYED = {"beaver_open", "compare_open", "refresh_share"}  # a party's DealingKey goes first
PATHS = {
    name: register(
        f"tether.smpc.{name}", fn, guard=guard, self_type=DealingKey if name in _KEYED else None
    ).path
    for name, fn, guard in (
        ("seed_key", seed_key, None),
        ("seed_pair", seed_pair, None),
        ("seed_agree", seed_agree, None),
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
