"""The protocols, run from the scientist's side: each step is a call through the op table on
every party's node (`tether.smpc.*`, see `ops.py`), and what is opened is only ever masked.

- Multiplication and matmul: Beaver triples dealt by the crypto provider; the parties open
  delta = x - a and epsilon = y - b (uniform, so they say nothing of x and y).
- Fixed-point truncation after a product: local, two parties (SecureML; `ring.truncate`).
- Comparison: the sign bit of x = x_0 + x_1, from the carry into bit 63: a tree of the
  carry operator over the shares' bits (XOR shares, AND by binary Beaver triples: 7 rounds
  for 64 bits, both ANDs of a level in one word), turned into an additive share with a random
  bit the provider deals in both forms. Exact; two parties.

Openings go through the scientist, which sums the parties' masked shares. The provider's
triples reach the parties through the scientist as well (see docs/smpc.md, "Security").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tether import errors
from tether.privacy.smpc import ops
from tether.privacy.smpc.ring import reconstruct
from tether.remote import Pointer, get_all
from tether.remote.client import Client, client_of
from tether.wire import Put

Shares = list[Pointer]


@dataclass(frozen=True)
class Parties:
    """Who holds the shares (in share order) and who deals the triples."""

    workers: tuple[Any, ...]
    provider: Any | None

    @property
    def clients(self) -> list[Client]:
        return [client_of(w) for w in self.workers]

    def __len__(self) -> int:
        return len(self.workers)

    def dealer(self, what: str) -> Client:
        if self.provider is None:
            raise errors.NotAllowedError(
                f"{what} on shared tensors needs a crypto provider to deal its randomness: "
                "share with .share(bob, alice, crypto_provider=worker)"
            )
        return client_of(self.provider)

    def two(self, what: str) -> None:
        if len(self.workers) != 2:
            raise errors.NotAllowedError(
                f"{what} runs between exactly two parties; these shares are on "
                f"{len(self.workers)} workers ({', '.join(str(w.id) for w in self.workers)})"
            )


def put(client: Client, tensor: torch.Tensor) -> Pointer:
    """Store a tensor on a worker; the command goes with the next one that waits."""
    obj_id = client.new_id()
    client.submit(Put(obj_id, tensor))
    return Pointer(client, obj_id)


def call(pointer_or_client: Pointer | Client, path: str, *args: Any) -> Pointer:
    """Queue `path` on the worker of the pointers among `args` (given by id, as Call.refs)."""
    client = (
        pointer_or_client.client if isinstance(pointer_or_client, Pointer) else pointer_or_client
    )
    wire, refs = _on_the_wire(args)
    return client.call(path, wire, kind="tensor", refs=refs)


def call_each(client: Client, path: str, count: int, *args: Any) -> list[Pointer]:
    """Queue `path` once, for `count` results (a pointer each)."""
    wire, refs = _on_the_wire(args)
    return client.call_each(path, wire, None, count, refs=refs)


def _on_the_wire(args: tuple[Any, ...]) -> tuple[list[Any], int]:
    """The call's arguments with pointers as their ids, and the bit mask saying which are."""
    wire, refs = [], 0
    for i, arg in enumerate(args):
        if isinstance(arg, Pointer):
            wire.append(arg.id)
            refs |= 1 << i
        else:
            wire.append(arg)
    return wire, refs


def each(parties: Parties, path: str, *shares_or_values: Any) -> Shares:
    """`path` on every party, with its own share of each shared argument (lists of shares) and
    the same plain values; a share of the result from each."""
    out = []
    for i in range(len(parties)):
        args = [a[i] if isinstance(a, list) else a for a in shares_or_values]
        out.append(
            call(args[0] if isinstance(args[0], Pointer) else parties.clients[i], path, *args)
        )
    return out


def open_(shares: Sequence[Pointer]) -> torch.Tensor:
    """The value: every share fetched (and freed) and summed in the ring."""
    return reconstruct([get_all([s])[0] for s in shares])


def open_xor(shares: Sequence[Pointer]) -> torch.Tensor:
    values = [get_all([s])[0] for s in shares]
    total = values[0].clone()
    for v in values[1:]:
        total ^= v
    return total


def deal(parties: Parties, what: str, path: str, per_party: int, *args: Any) -> list[list[Pointer]]:
    """The provider runs `path` (laid out as groups of n shares); each party gets its share of
    every group. Returns, per party, its `per_party` pointers in order."""
    provider = parties.dealer(what)
    n = len(parties)
    values = get_all(call_each(provider, path, n * per_party, *args, n))
    clients = parties.clients
    return [
        [put(clients[i], values[group * n + i]) for group in range(per_party)] for i in range(n)
    ]


# ---- multiplication ---------------------------------------------------------------------------


def beaver(
    parties: Parties,
    x: Shares,
    y: Shares,
    op: str,
    shape_x: torch.Size,
    shape_y: torch.Size,
    divisor: int = 1,
) -> Shares:
    """Shares of op(x, y) ('mul' or 'matmul') for shared x and y, divided by `divisor` (a
    fixed-point product's scale: two parties, truncated as `truncate` does)."""
    if divisor != 1:
        parties.two("fixed-precision multiplication and division")
    dealt = deal(
        parties,
        f"{op} of two shared tensors",
        ops.PATHS["triple"],
        3,
        op,
        list(shape_x),
        list(shape_y),
    )
    masked = []
    for i, (a, b, _) in enumerate(dealt):
        masked += [call(x[i], "torch.sub", x[i], a), call(y[i], "torch.sub", y[i], b)]
    fetched = [get_all(masked[2 * i : 2 * i + 2]) for i in range(len(parties))]
    delta = reconstruct([f[0] for f in fetched])
    epsilon = reconstruct([f[1] for f in fetched])
    return [
        call(a, ops.PATHS["beaver"], c, a, b, delta, epsilon, op, i == 0, divisor)
        for i, (a, b, c) in enumerate(dealt)
    ]


def truncate(parties: Parties, x: Shares, divisor: int) -> Shares:
    """Shares of x / divisor (rounded, within 1), for a public positive int divisor."""
    if divisor == 1:
        return x
    parties.two("fixed-precision multiplication and division")
    return [call(s, ops.PATHS["truncate"], s, divisor, i) for i, s in enumerate(x)]


def refresh(parties: Parties, x: Shares, shape: torch.Size) -> Shares:
    """The same value under fresh shares (shares of zero from the provider added)."""
    zeros = deal(parties, "refresh()", ops.PATHS["zero_shares"], 1, list(shape))
    return [call(s, "torch.add", s, z[0]) for s, z in zip(x, zeros, strict=True)]


# ---- comparison -------------------------------------------------------------------------------

_LEVELS = (1, 2, 4, 8, 16, 32)


def _and_open(
    parties: Parties, masks: list[tuple[Pointer, Pointer]]
) -> tuple[torch.Tensor, torch.Tensor]:
    fetched = [get_all(list(m)) for m in masks]
    d, e = fetched[0]
    d, e = d.clone(), e.clone()
    for other in fetched[1:]:
        d ^= other[0]
        e ^= other[1]
    return d, e


def sign_bit(parties: Parties, x: Shares, shape: torch.Size) -> Shares:
    """Additive shares (of 0 or 1, unscaled) of [x < 0], x read as a signed 64-bit value."""
    parties.two("comparison")
    shapes = [list(shape)] * (1 + len(_LEVELS))
    dealt = deal(parties, "comparison", ops.PATHS["and_triples"], 3 * len(shapes), shapes)
    bits = deal(parties, "comparison", ops.PATHS["random_bits"], 2, list(shape))

    def triple(i: int, k: int) -> tuple[Pointer, Pointer, Pointer]:
        return dealt[i][3 * k], dealt[i][3 * k + 1], dealt[i][3 * k + 2]

    masks = []
    for i in range(2):
        a, b, _ = triple(i, 0)
        d_e = call_each(x[i].client, ops.PATHS["msb_masks"], 2, x[i], a, b, i)
        masks.append((d_e[0], d_e[1]))
    d, e = _and_open(parties, masks)
    g = []
    for i in range(2):
        a, b, c = triple(i, 0)
        g.append(call(x[i], ops.PATHS["and_close"], c, a, b, d, e, i == 0))
    p = list(x)
    for k, shift in enumerate(_LEVELS, start=1):
        masks = []
        for i in range(2):
            a, b, _ = triple(i, k)
            d_e = call_each(
                x[i].client, ops.PATHS["level_masks"], 2, g[i], p[i], shift, a, b, i == 0
            )
            masks.append((d_e[0], d_e[1]))
        d, e = _and_open(parties, masks)
        for i in range(2):
            a, b, c = triple(i, k)
            g[i], p[i] = call_each(
                x[i].client,
                ops.PATHS["level_close"],
                2,
                g[i],
                p[i],
                shift,
                c,
                a,
                b,
                d,
                e,
                i == 0,
            )
    masked = [call(x[i], ops.PATHS["msb_bit"], x[i], g[i], bits[i][0]) for i in range(2)]
    opened = open_xor(masked)
    return [
        call(bits[i][1], ops.PATHS["bit_to_ring"], bits[i][1], opened, i == 0) for i in range(2)
    ]
