"""The protocols, run from the scientist's side: each step is a call through the op table on
every party's node (`tether.smpc.*`, see `ops.py`), and what is opened is only ever masked.

- Dealing: each party draws its correlated randomness from a seed it agreed with the crypto
  provider (`dealing.py`); the provider sends only the last party's share of the dependent
  part.
- Multiplication and matmul: Beaver triples; the parties open delta = x - a and
  epsilon = y - b (uniform, so they say nothing of x and y). A value's mask is kept
  (`Mask`), so a value that enters several products is opened once.
- Fixed-point truncation after a product: local, two parties (SecureML; `ring.truncate`).
- Comparison: the sign bit of x = x_0 + x_1, from the carry into bit 63: a tree of the
  carry operator over the shares' bits (XOR shares, AND by binary Beaver triples: 7 rounds
  for 64 bits, both ANDs of a level in one word), turned into an additive share with a random
  bit dealt in both forms. Exact; two parties.

Openings go through the scientist, which sums the parties' masked shares; so does the
provider's correction (see docs/smpc.md, "Security").
"""

from __future__ import annotations

import itertools
import weakref
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


@dataclass(frozen=True)
class Held:
    """An object a worker keeps for this session (a dealing key), named by id: unlike a
    pointer, dropping it frees nothing (the worker frees it with the client's other objects)."""

    id: int


def _on_the_wire(args: tuple[Any, ...]) -> tuple[list[Any], int]:
    """The call's arguments with pointers as their ids, and the bit mask saying which are."""
    wire, refs = [], 0
    for i, arg in enumerate(args):
        if isinstance(arg, Pointer | Held):
            wire.append(arg.id)
            refs |= 1 << i
        else:
            wire.append(arg)
    return wire, refs


def fetch(pointers: Sequence[Pointer]) -> list[torch.Tensor]:
    """The values of one worker's objects, fetched and freed. The protocols only read them,
    so they adopt them: a worker in this process lends its memory rather than copying it
    (on an `open` node; `tether.node.policy.lendable`), which saves a step ~7% (12 MB)."""
    return get_all(list(pointers), adopt=True)


def open_(shares: Sequence[Pointer]) -> torch.Tensor:
    """The value: every share fetched (and freed) and summed in the ring."""
    return reconstruct([fetch([s])[0] for s in shares])


def open_xor(shares: Sequence[Pointer]) -> torch.Tensor:
    """The value of XOR shares: every share fetched (and freed) and XORed."""
    return _xor([fetch([s])[0] for s in shares])


def _xor(values: Sequence[torch.Tensor]) -> torch.Tensor:
    total = values[0].clone()
    for v in values[1:]:
        total ^= v
    return total


# ---- dealing ----------------------------------------------------------------------------------

_NONCES = itertools.count(1)  # one per draw: a key's nonces only go up (DealingKey.seed_for)
# Per provider, per party: the ids of the dealing key they agreed (on the provider, the party).
_KEYS: weakref.WeakKeyDictionary[Client, weakref.WeakKeyDictionary[Client, tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)


def _keys(parties: Parties, what: str) -> tuple[Client, list[Held], list[Held]]:
    """The provider, and each party's dealing key on the provider and on the party; a party
    new to this provider agrees one first (X25519: only public keys pass here, so the seeds
    are the provider's and the party's alone)."""
    provider = parties.dealer(what)
    known = _KEYS.setdefault(provider, weakref.WeakKeyDictionary())
    clients = parties.clients
    new = [c for c in clients if c not in known]
    if new:
        private, public = call_each(provider, ops.PATHS["seed_key"], 2)
        [provider_public] = get_all([public])
        for client in new:
            theirs, party_public = call_each(client, ops.PATHS["seed_pair"], 2, provider_public)
            [public] = get_all([party_public])
            mine = call(provider, ops.PATHS["seed_agree"], private, public)
            known[client] = (mine.leave_on_worker(), theirs.leave_on_worker())
    pairs = [known[c] for c in clients]
    return provider, [Held(p[0]) for p in pairs], [Held(p[1]) for p in pairs]


def _to_last(parties: Parties, correction: Pointer) -> Pointer:
    """The provider's correction, fetched and stored on the last party."""
    return put(parties.clients[-1], fetch([correction])[0])


# ---- multiplication ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mask:
    """A shared value's Beaver mask a, kept so that the value is opened once however many
    products it enters (SecureML's reuse of masked matrices): each party's share of a, the
    opened x - a stored on every party, and a itself on the provider, which deals later
    triples on it. x - a is uniform and the same each time, so using it again says nothing
    new; each fresh triple's c is drawn anew."""

    parts: Shares
    opened: Shares
    whole: Pointer


def beaver(
    parties: Parties,
    x: Shares,
    y: Shares,
    op: str,
    shape_x: torch.Size,
    shape_y: torch.Size,
    divisor: int = 1,
    masks: tuple[Mask | None, Mask | None] = (None, None),
) -> tuple[Shares, Mask, Mask]:
    """Shares of op(x, y) ('mul' or 'matmul') for shared x and y, divided by `divisor` (a
    fixed-point product's scale: two parties, truncated as `truncate` does); and the masks
    of x and y, to pass back in `masks` while x and y keep these shares. An operand masked
    before is not opened again; y = x (the same shares) is masked once."""
    if divisor != 1:
        parties.two("fixed-precision multiplication and division")
    provider, provider_keys, keys = _keys(parties, f"{op} of two shared tensors")
    nonce = next(_NONCES)
    kept_x, kept_y = masks
    same = x is y and kept_x is None
    fresh = [(kept_x is None, x), (kept_y is None and not same, y)]
    n = sum(is_fresh for is_fresh, _ in fresh)
    shapes = [list(shape_x), list(shape_y)]
    made = call_each(
        provider,
        ops.PATHS["triple_correction"],
        1 + n,
        op,
        *shapes,
        nonce,
        None if kept_x is None else kept_x.whole,
        None if kept_y is None else kept_y.whole,
        same,
        *provider_keys,
    )
    last = len(parties) - 1
    clients = parties.clients
    dealt = [  # (the last party draws nothing when both operands were masked before)
        []
        if i == last and not n
        else call_each(
            clients[i],
            ops.PATHS["beaver_open"],
            2 * n + (i != last),
            keys[i],
            *(shares[i] if is_fresh else None for is_fresh, shares in fresh),
            nonce,
            op,
            *shapes,
            same,
            i == last,
        )
        for i in range(len(parties))
    ]
    fetched = [fetch(d[:n]) for d in dealt] if n else []
    opened = [reconstruct([f[k] for f in fetched]) for k in range(n)]
    new = [
        Mask([d[n + k] for d in dealt], [put(c, opened[k]) for c in clients], made[1 + k])
        for k in range(n)
    ]
    mask_x = kept_x or new.pop(0)
    mask_y = mask_x if same else kept_y or new.pop(0)
    c = [d[2 * n] for d in dealt[:last]] + [_to_last(parties, made[0])]
    product = [
        call(
            clients[i],
            ops.PATHS["beaver"],
            c[i],
            mask_x.parts[i],
            mask_y.parts[i],
            mask_x.opened[i],
            mask_y.opened[i],
            op,
            i == 0,
            divisor,
        )
        for i in range(len(parties))
    ]
    return product, mask_x, mask_y


def truncate(parties: Parties, x: Shares, divisor: int) -> Shares:
    """Shares of x / divisor (rounded, within 1), for a public positive int divisor."""
    if divisor == 1:
        return x
    parties.two("fixed-precision multiplication and division")
    return [call(s, ops.PATHS["truncate"], s, divisor, i) for i, s in enumerate(x)]


def refresh(parties: Parties, x: Shares, shape: torch.Size) -> Shares:
    """The same value under fresh shares (shares of zero drawn from the seeds added)."""
    provider, provider_keys, keys = _keys(parties, "refresh()")
    nonce = next(_NONCES)
    correction = call(provider, ops.PATHS["zeros_correction"], list(shape), nonce, *provider_keys)
    out = [call(s, ops.PATHS["refresh_share"], keys[i], s, nonce) for i, s in enumerate(x[:-1])]
    return [*out, call(x[-1], "torch.add", x[-1], _to_last(parties, correction))]


# ---- comparison -------------------------------------------------------------------------------

_LEVELS = (1, 2, 4, 8, 16, 32)


def _and_open(masks: list[tuple[Pointer, Pointer]]) -> tuple[torch.Tensor, torch.Tensor]:
    """An AND's opened d and e: each party's masked pair fetched, XORed across parties."""
    fetched = [fetch(m) for m in masks]
    return _xor([f[0] for f in fetched]), _xor([f[1] for f in fetched])


def sign_bit(parties: Parties, x: Shares, shape: torch.Size) -> Shares:
    """Additive shares (of 0 or 1, unscaled) of [x < 0], x read as a signed 64-bit value."""
    parties.two("comparison")
    provider, provider_keys, keys = _keys(parties, "comparison")
    nonce = next(_NONCES)
    corrections = call_each(
        provider, ops.PATHS["compare_correction"], 2, list(shape), nonce, *provider_keys
    )
    # Per party: the first AND's masked inputs d, e; AND triples a, b (a word per level) and
    # the random bit's XOR share r; party 0 also c and the bit's additive share.
    dealt = [
        call_each(x[i].client, ops.PATHS["compare_open"], 7 - 2 * i, keys[i], x[i], nonce, i == 1)
        for i in range(2)
    ]
    d, e = _and_open([(dd[0], dd[1]) for dd in dealt])
    c_last, bit_last = fetch(corrections)
    a, b, r = [dd[2] for dd in dealt], [dd[3] for dd in dealt], [dd[4] for dd in dealt]
    c = [dealt[0][5], put(parties.clients[1], c_last)]
    bit = [dealt[0][6], put(parties.clients[1], bit_last)]
    g = [call(x[i], ops.PATHS["and_close"], c[i], a[i], b[i], d, e, i == 0) for i in range(2)]
    p = list(x)
    for shift in _LEVELS:
        masks = []
        for i in range(2):
            d_i, e_i = call_each(
                x[i].client, ops.PATHS["level_masks"], 2, g[i], p[i], shift, a[i], b[i], i == 0
            )
            masks.append((d_i, e_i))
        d, e = _and_open(masks)
        for i in range(2):
            g[i], p[i] = call_each(
                x[i].client,
                ops.PATHS["level_close"],
                2,
                g[i],
                p[i],
                shift,
                c[i],
                a[i],
                b[i],
                d,
                e,
                i == 0,
            )
    masked = [call(x[i], ops.PATHS["msb_bit"], x[i], g[i], r[i]) for i in range(2)]
    opened = open_xor(masked)
    return [call(bit[i], ops.PATHS["bit_to_ring"], bit[i], opened, i == 0) for i in range(2)]
