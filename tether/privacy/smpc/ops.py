"""What the parties and the crypto provider run on their nodes: registered in the op table
(`tether.smpc.*`) when this module is imported, so the node never imports SMPC.

Every function takes shares as plain int64 tensors, and only plain values (ints, shape lists,
the names "mul" and "matmul") besides, so a peer's call is checked like any other. The
provider's functions deal correlated randomness; the parties' functions are the local steps
of the protocols in `tether.privacy.smpc.protocols`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from tether.ops import register
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


def _xor_split(value: torch.Tensor, n: int) -> list[torch.Tensor]:
    shares = [ring.random_ring(value.shape) for _ in range(n - 1)]
    last = value.clone()
    for share in shares:
        last ^= share
    return [*shares, last]


# ---- the crypto provider ----------------------------------------------------------------------


def triple(op: str, shape_x: list, shape_y: list, n: int) -> tuple[torch.Tensor, ...]:
    """A Beaver triple for `op`: shares of uniform a (shape_x) and b (shape_y), and of
    c = op(a, b); laid out a_1..a_n, b_1..b_n, c_1..c_n."""
    n, product = _parties(n), _product(op)
    a, b = ring.random_ring(_shape(shape_x)), ring.random_ring(_shape(shape_y))
    return (*ring.split(a, n), *ring.split(b, n), *ring.split(product(a, b), n))


def and_triples(shapes: list, n: int) -> tuple[torch.Tensor, ...]:
    """Triples for bitwise AND, XOR-shared, one per shape: for each, a_1..a_n, b_1..b_n,
    c_1..c_n with c = a & b."""
    n = _parties(n)
    dealt: list[torch.Tensor] = []
    for shape in shapes:
        a, b = ring.random_ring(_shape(shape)), ring.random_ring(_shape(shape))
        dealt += [*_xor_split(a, n), *_xor_split(b, n), *_xor_split(a & b, n)]
    return tuple(dealt)


def random_bits(shape: list, n: int) -> tuple[torch.Tensor, ...]:
    """A uniform bit per element, shared twice: XOR shares r_1..r_n, then additive ones."""
    n = _parties(n)
    bits = ring.random_ring(_shape(shape)) & 1
    return (*_xor_split(bits, n), *ring.split(bits, n))


def zero_shares(shape: list, n: int) -> tuple[torch.Tensor, ...]:
    """Fresh shares of zero, to re-randomise a shared value (`refresh()`)."""
    return tuple(ring.split(torch.zeros(_shape(shape), dtype=ring.DTYPE), _parties(n)))


# ---- the parties --------------------------------------------------------------------------


def split(secret: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Shares of a tensor this worker holds (`ptr.fix_precision().share(...)`)."""
    return tuple(ring.split(secret, _parties(n)))


def encode(value: torch.Tensor, precision: int, base: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ring.RingError(f"encode takes a tensor, got {type(value).__name__}")
    return ring.encode(value, precision, base)


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


def msb_masks(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, party: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked inputs of the adder's first AND: party 0's share of x against party 1's
    (as XOR shares, each party holds its own and zeros for the other's)."""
    zero = torch.zeros_like(x)
    return (x if party == 0 else zero) ^ a, (x if party == 1 else zero) ^ b


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
    head t, P(t) & G(t - shift); at t - shift (a bit the level leaves free), P(t) & P(t - shift)."""
    heads, below = _level(shift)
    g, p = _tree_inputs(g, p, shift, first)
    left = (p & heads) | ((p >> shift) & below)
    right = ((g << shift) & heads) | (p & below)
    return left ^ a, right ^ b


def and_close(
    c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, e: torch.Tensor, first: bool
) -> torch.Tensor:
    """A party's XOR share of x & y from the opened d = x ^ a and e = y ^ b."""
    z = c ^ (d & b) ^ (e & a)
    return z ^ (d & e) if first else z


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
    z = and_close(c, a, b, d, e, first)
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
    (int64) and every `first` flag a bool, whatever a peer sends."""

    names = list(inspect.signature(step).parameters)
    at = names.index("first") if "first" in names else len(names)

    @functools.wraps(step)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.dtype != ring.DTYPE:
                raise ring.RingError(
                    f"{step.__name__} takes shares in the 2^64 ring (int64), got {value.dtype}"
                )
        first = args[at] if at < len(args) else kwargs.get("first", False)
        if type(first) is not bool:
            raise ValueError(f"{step.__name__}'s first must be true or false, got {first!r}")
        return step(*args, **kwargs)

    return checked


# ---- guards: the elements each call allocates, bounded before it runs ----------------------


def _numel(shape: Any) -> int:
    return _shape(shape).numel()


def _triple_size(args: tuple, kwargs: dict) -> int:
    op, shape_x, shape_y, n = args
    x = torch.empty(_shape(shape_x), device="meta", dtype=ring.DTYPE)
    y = torch.empty(_shape(shape_y), device="meta", dtype=ring.DTYPE)
    out = torch.matmul(x, y) if op == "matmul" else x * y
    return 2 * _parties(n) * (x.numel() + y.numel() + out.numel())


def _shapes_size(args: tuple, kwargs: dict) -> int:
    shapes, n = args
    if not isinstance(shapes, list | tuple):
        raise ValueError("and_triples takes a list of shapes")
    return 4 * _parties(n) * sum(_numel(s) for s in shapes)


def _shape_size(args: tuple, kwargs: dict) -> int:
    shape, n = args
    return 3 * _parties(n) * _numel(shape)


def _split_size(args: tuple, kwargs: dict) -> int:
    secret, n = args
    return 2 * _parties(n) * (secret.numel() if isinstance(secret, torch.Tensor) else 0)


def _beaver_size(args: tuple, kwargs: dict) -> int:
    c = args[0]
    return 4 * c.numel() if isinstance(c, torch.Tensor) else 0


PATHS = {
    name: register(f"tether.smpc.{name}", fn, guard=guard).path
    for name, fn, guard in (
        ("triple", triple, _triple_size),
        ("and_triples", and_triples, _shapes_size),
        ("random_bits", random_bits, _shape_size),
        ("zero_shares", zero_shares, _shape_size),
        ("split", split, _split_size),
        ("encode", encode, None),
        ("beaver", _shares_only(beaver), _beaver_size),
        ("truncate", _shares_only(truncate), None),
        ("msb_masks", _shares_only(msb_masks), None),
        ("level_masks", _shares_only(level_masks), None),
        ("and_close", _shares_only(and_close), None),
        ("level_close", _shares_only(level_close), None),
        ("msb_bit", _shares_only(msb_bit), None),
        ("bit_to_ring", _shares_only(bit_to_ring), None),
    )
}
