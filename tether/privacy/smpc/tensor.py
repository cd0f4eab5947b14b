"""PySyft's two SMPC tensor types, as one small type each (not a chain of wrappers):

- `FixedPrecisionTensor`: a real tensor encoded in the 2^64 ring (`x.fix_precision()`), held
  here or, through a pointer, on a worker. `.share(...)` makes it an AdditiveSharingTensor;
  `.float_precision()` decodes it.
- `AdditiveSharingTensor`: one share per worker, each an ordinary int64 tensor stored there
  (a pointer here), with the precision it encodes (None: plain integers) and the crypto
  provider that deals triples. Its operators run the protocols of `protocols.py`, and record
  a small tape, so `loss.backward()` gives every leaf that requires grad its `.grad`, as
  shares (PySyft's AutogradTensor did this; here it is a field of the one type).

Long because the one type carries every operation the tutorials use on shares (arithmetic,
shape, comparisons, max, relu, torch functions), each with how its gradient flows back; the
protocols those operations call are in `protocols.py`, the nodes' steps in `ops.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tether import errors
from tether.privacy.smpc import ops, protocols, ring
from tether.privacy.smpc.protocols import Parties, Shares, call, put
from tether.remote import Pointer, get_all
from tether.remote.client import client_of

Backward = Callable[["AdditiveSharingTensor"], Sequence["AdditiveSharingTensor | None"]]


def _meta(shape: torch.Size) -> torch.Tensor:
    return torch.empty(shape, dtype=ring.DTYPE, device="meta")


def _check_ring_option(field: Any) -> None:
    if field is not None and int(field) != 2**ring.RING_BITS:
        raise ring.RingError(
            f"tether shares over the 2^64 ring only (int64 wrap-around), not field={field}"
        )


class FixedPrecisionTensor:
    """Real values as ring elements: round(x * base^precision_fractional), here or remote."""

    def __init__(
        self, value: torch.Tensor | Pointer, precision_fractional: int = 3, base: int = 10
    ):
        self.value = value
        self.precision_fractional = int(precision_fractional)
        self.base = int(base)

    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    def float_precision(self) -> torch.Tensor:
        """The real values (float32)."""
        if isinstance(self.value, Pointer):
            raise TypeError("this fixed-precision tensor is on a worker: .get() it first")
        return ring.decode(self.value, self.precision_fractional, self.base)

    float_prec = float_precision

    def get(self) -> FixedPrecisionTensor:
        if not isinstance(self.value, Pointer):
            return self
        return FixedPrecisionTensor(self.value.get(), self.precision_fractional, self.base)

    def share(
        self,
        *workers: Any,
        crypto_provider: Any = None,
        requires_grad: bool = False,
        field: Any = None,
        **_: Any,
    ) -> AdditiveSharingTensor | RemoteSharing:
        """Shares on `workers`. A fixed-precision tensor on a worker is split there: that
        worker keeps its own share and the others' go through here (one share each: uniform)."""
        _check_ring_option(field)
        parties = _parties(workers, crypto_provider)
        if isinstance(self.value, Pointer):
            return RemoteSharing(
                _share_remote(self.value, parties), parties, self.precision_fractional, self.base
            )
        return AdditiveSharingTensor._share(
            self.value, parties, self.precision_fractional, self.base, requires_grad
        )

    def __repr__(self) -> str:
        where = "" if isinstance(self.value, torch.Tensor) else f" on {self.value.location.id}"
        precision = f"precision {self.base}^-{self.precision_fractional}"
        return f"FixedPrecisionTensor{list(self.shape)}{where} ({precision})"


class RemoteSharing:
    """What `ptr.fix_precision().share(...)` gives: the shares a worker made of its tensor.
    `.get()` gives the AdditiveSharingTensor (the shares stay where they are)."""

    def __init__(self, shares: Shares, parties: Parties, precision: int, base: int) -> None:
        self._sharing = AdditiveSharingTensor(
            shares, parties, shares[0].shape, precision, base, requires_grad=False
        )

    def get(self) -> AdditiveSharingTensor:
        return self._sharing


def _parties(workers: Sequence[Any], provider: Any) -> Parties:
    if len(workers) == 1 and isinstance(workers[0], list | tuple):
        workers = tuple(workers[0])
    if len(workers) < 2:
        raise ValueError(f"share() needs at least two workers, got {len(workers)}")
    clients = [client_of(w) for w in workers]
    if len(set(map(id, clients))) != len(clients):
        raise ValueError("share() needs distinct workers: each holds one share")
    if provider is not None and client_of(provider) in clients:
        raise errors.NotAllowedError(
            f"the crypto provider {provider.id!r} holds a share too: it would see both the "
            "triples and a share, so it must be a worker that holds none"
        )
    return Parties(tuple(workers), provider)


def _share_remote(value: Pointer, parties: Parties) -> Shares:
    holder = value.client
    made = protocols.call_each(holder, ops.PATHS["split"], len(parties), value, len(parties))
    shares = []
    for client, share in zip(parties.clients, made, strict=True):
        shares.append(share if client is holder else put(client, get_all([share])[0]))
    return shares


class AdditiveSharingTensor:
    """A tensor split into additive shares on two or more workers (see the module docstring).
    Make one with `tensor.share(...)` or `AdditiveSharingTensor.from_shares(...)`."""

    __array_priority__ = 1000  # `0 + x` and `tensor * x` come here

    def __init__(
        self,
        shares: Shares,
        parties: Parties,
        shape: torch.Size,
        precision: int | None,
        base: int = 10,
        requires_grad: bool = False,
    ) -> None:
        self.shares = shares  # (also forgets any mask: see `_mask`)
        self.parties = parties
        self.shape = torch.Size(shape)
        self.precision_fractional = precision
        self.base = base
        self.requires_grad = requires_grad
        self.grad: AdditiveSharingTensor | None = None
        self._grad_fn: tuple[tuple[Any, ...], Backward] | None = None

    @property
    def shares(self) -> Shares:
        return self._shares

    @shares.setter
    def shares(self, shares: Shares) -> None:
        self._shares = shares
        # The Beaver mask of these shares (`_beaver`): new shares (an optimizer's step,
        # `.get()`) are a new value, masked afresh.
        self._mask: protocols.Mask | None = None

    # ---- making and opening -------------------------------------------------------------------

    @classmethod
    def _share(
        cls,
        secret: torch.Tensor,
        parties: Parties,
        precision: int | None,
        base: int,
        requires_grad: bool,
    ) -> AdditiveSharingTensor:
        values = ring.split(secret, len(parties))
        shares = [put(c, v) for c, v in zip(parties.clients, values, strict=True)]
        return cls(shares, parties, secret.shape, precision, base, requires_grad)

    @classmethod
    def from_shares(
        cls,
        shares: Sequence[Pointer],
        crypto_provider: Any = None,
        precision_fractional: int | None = None,
        base: int = 10,
    ) -> AdditiveSharingTensor:
        """Adopt shares already on workers (one pointer per worker, int64, one shape)."""
        parties = _parties([p.location for p in shares], crypto_provider)
        shapes = set()
        for p in shares:
            if p.dtype != ring.DTYPE:
                raise ring.RingError(
                    f"the share on {p.location.id!r} is {p.dtype}, not a 2^64 ring element (int64)"
                )
            shapes.add(tuple(p.shape))
        if len(shapes) != 1:
            raise ValueError(f"shares of one tensor must have one shape, got {sorted(shapes)}")
        return cls(list(shares), parties, torch.Size(shapes.pop()), precision_fractional, base)

    def get(self) -> torch.Tensor | FixedPrecisionTensor:
        """The value (its shares fetched and freed): a FixedPrecisionTensor when it encodes
        reals (`.float_precision()` decodes it), else the integers."""
        value = protocols.open_(self.shares)
        self.shares = []
        if self.precision_fractional is None:
            return value
        return FixedPrecisionTensor(value, self.precision_fractional, self.base)

    @property
    def _scale(self) -> int:
        return (
            1
            if self.precision_fractional is None
            else ring.scale_of(self.precision_fractional, self.base)
        )

    @property
    def crypto_provider(self) -> Any:
        return self.parties.provider

    @property
    def location(self) -> tuple[Any, ...]:
        return self.parties.workers

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        kind = (
            "integers"
            if self.precision_fractional is None
            else f"precision {self.base}^-{self.precision_fractional}"
        )
        where = ", ".join(str(w.id) for w in self.parties.workers)
        provider = self.parties.provider.id if self.parties.provider is not None else None
        shape = list(self.shape)
        return f"AdditiveSharingTensor{shape} ({kind}) on {where}, crypto provider {provider}"

    def __bool__(self) -> bool:
        raise TypeError("the truth of a shared value is secret: .get() it first")

    # ---- the tape -----------------------------------------------------------------------------

    def _like(
        self, shares: Shares, shape: torch.Size | None = None, precision: Any = "same"
    ) -> AdditiveSharingTensor:
        return AdditiveSharingTensor(
            shares,
            self.parties,
            self.shape if shape is None else shape,
            self.precision_fractional if precision == "same" else precision,
            self.base,
        )

    def _record(
        self, out: AdditiveSharingTensor, parents: tuple[Any, ...], backward: Backward
    ) -> AdditiveSharingTensor:
        if torch.is_grad_enabled() and any(
            isinstance(p, AdditiveSharingTensor) and p.requires_grad for p in parents
        ):
            out.requires_grad = True
            out._grad_fn = (parents, backward)
        return out

    def backward(self, grad: AdditiveSharingTensor | None = None) -> None:
        """Fill `.grad` of every leaf this value came from that requires grad (as shares)."""
        if grad is None:
            grad = self._public(torch.ones(self.shape))
        order: list[AdditiveSharingTensor] = []
        seen: set[int] = set()
        stack: list[tuple[AdditiveSharingTensor, bool]] = [(self, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            if node._grad_fn is not None:
                for parent in node._grad_fn[0]:
                    if isinstance(parent, AdditiveSharingTensor) and parent.requires_grad:
                        stack.append((parent, False))
        grads: dict[int, AdditiveSharingTensor] = {id(self): grad}
        with torch.no_grad():
            for node in reversed(order):
                g = grads.pop(id(node), None)
                if g is None:
                    continue
                if node._grad_fn is None:
                    node.grad = g if node.grad is None else node.grad + g
                    continue
                parents, backward = node._grad_fn
                for parent, pg in zip(parents, backward(g), strict=True):
                    if pg is None or not (
                        isinstance(parent, AdditiveSharingTensor) and parent.requires_grad
                    ):
                        continue
                    known = grads.get(id(parent))
                    grads[id(parent)] = pg if known is None else known + pg

    # ---- operands -----------------------------------------------------------------------------

    def _same_kind(self, other: AdditiveSharingTensor) -> Parties:
        mine = [id(c) for c in self.parties.clients]
        theirs = [id(c) for c in other.parties.clients]
        if mine != theirs:
            raise errors.WorkerMismatchError(
                "these shared tensors are shared among different workers ("
                f"{[w.id for w in self.parties.workers]} and "
                f"{[w.id for w in other.parties.workers]}): "
                "share both among the same workers, in the same order"
            )
        if self.precision_fractional != other.precision_fractional or self.base != other.base:
            raise ValueError(
                f"these shared tensors have different precisions ({self.precision_fractional} "
                f"and {other.precision_fractional} digits, bases {self.base} and {other.base}): "
                "fix_precision() both alike"
            )
        mine_p, theirs_p = self.parties.provider, other.parties.provider
        if (
            mine_p is not None
            and theirs_p is not None
            and client_of(mine_p) is not client_of(theirs_p)
        ):
            raise errors.WorkerMismatchError(
                f"these shared tensors name different crypto providers ({mine_p.id!r} and "
                f"{theirs_p.id!r})"
            )
        return self.parties if mine_p is not None else other.parties

    def _encode(self, value: Any) -> torch.Tensor:
        """A public value as ring elements at this tensor's precision."""
        tensor = torch.as_tensor(value)
        if self.precision_fractional is None:
            if tensor.is_floating_point():
                raise TypeError(
                    "these shares hold integers: combine them with integers, or "
                    "fix_precision() before share()"
                )
            return tensor.to(ring.DTYPE)
        return ring.encode(tensor, self.precision_fractional, self.base)

    def _public(self, value: Any) -> AdditiveSharingTensor:
        """A public value as a sharing (party 0 holds it, the others zeros)."""
        encoded = self._encode(value)
        shares = [
            put(c, encoded if i == 0 else torch.zeros_like(encoded))
            for i, c in enumerate(self.parties.clients)
        ]
        return self._like(shares, encoded.shape)

    def _local(self, path: str, *args: Any) -> Shares:
        return [call(s, path, s, *args) for s in self.shares]

    def _broadcast_to(self, shape: torch.Size) -> Shares:
        if shape == self.shape:
            return self.shares
        return self._local("torch.Tensor.expand", list(shape))

    # ---- arithmetic ---------------------------------------------------------------------------

    def add(self, other: Any) -> AdditiveSharingTensor:
        if isinstance(other, AdditiveSharingTensor):
            parties = self._same_kind(other)
            shape = torch.broadcast_shapes(self.shape, other.shape)
            out = AdditiveSharingTensor(
                [
                    call(a, "torch.add", a, b)
                    for a, b in zip(self.shares, other.shares, strict=True)
                ],
                parties,
                shape,
                self.precision_fractional,
                self.base,
            )
            return self._record(
                out, (self, other), lambda g: (g._sum_to(self.shape), g._sum_to(other.shape))
            )
        encoded = self._encode(other)
        shape = torch.broadcast_shapes(self.shape, encoded.shape)
        shares = self._broadcast_to(shape)
        shares = [call(shares[0], "torch.add", shares[0], encoded), *shares[1:]]
        return self._record(self._like(shares, shape), (self,), lambda g: (g._sum_to(self.shape),))

    def neg(self) -> AdditiveSharingTensor:
        out = self._like(self._local("torch.neg"))
        return self._record(out, (self,), lambda g: (-g,))

    def sub(self, other: Any) -> AdditiveSharingTensor:
        return self.add(-other if isinstance(other, AdditiveSharingTensor) else _negated(other))

    def mul(self, other: Any) -> AdditiveSharingTensor:
        if isinstance(other, AdditiveSharingTensor):
            parties = self._same_kind(other)
            product = self._beaver(parties, other, "mul", self._scale)
            shape = torch.broadcast_shapes(self.shape, other.shape)
            out = AdditiveSharingTensor(
                product,
                parties,
                shape,
                self.precision_fractional,
                self.base,
            )
            return self._record(
                out,
                (self, other),
                lambda g: ((g * other)._sum_to(self.shape), (g * self)._sum_to(other.shape)),
            )
        if isinstance(other, int) and not isinstance(other, bool):
            out = self._like(self._local("torch.mul", other))
            return self._record(out, (self,), lambda g: (g * other,))
        encoded = self._encode(other)
        shape = torch.broadcast_shapes(self.shape, encoded.shape)
        product = [call(s, "torch.mul", s, encoded) for s in self.shares]
        out = self._like(protocols.truncate(self.parties, product, self._scale), shape)
        return self._record(out, (self,), lambda g: ((g * other)._sum_to(self.shape),))

    def _beaver(
        self, parties: Parties, other: AdditiveSharingTensor, op: str, divisor: int
    ) -> Shares:
        """Shares of op(self, other) by a Beaver triple, each operand masked once (its mask
        kept for the next product it enters while its shares stay the same)."""
        product, mask, other_mask = protocols.beaver(
            parties,
            self.shares,
            other.shares,
            op,
            self.shape,
            other.shape,
            divisor,
            (self._mask, other._mask),
        )
        self._mask, other._mask = mask, other_mask
        return product

    def _mul_bits(self, bits: AdditiveSharingTensor) -> AdditiveSharingTensor:
        """self * bits, for shared integers bits (0 or 1): no truncation."""
        product = self._beaver(self._same_kind_bits(bits), bits, "mul", 1)
        return self._like(product, torch.broadcast_shapes(self.shape, bits.shape))

    def _same_kind_bits(self, bits: AdditiveSharingTensor) -> Parties:
        if [id(c) for c in self.parties.clients] != [id(c) for c in bits.parties.clients]:
            raise errors.WorkerMismatchError("bits shared among other workers")
        return self.parties if self.parties.provider is not None else bits.parties

    def matmul(self, other: Any) -> AdditiveSharingTensor:
        if isinstance(other, AdditiveSharingTensor):
            parties = self._same_kind(other)
            product = self._beaver(parties, other, "matmul", self._scale)
            shape = torch.matmul(_meta(self.shape), _meta(other.shape)).shape
            out = AdditiveSharingTensor(
                product,
                parties,
                shape,
                self.precision_fractional,
                self.base,
            )

            def backward(g: AdditiveSharingTensor) -> tuple[AdditiveSharingTensor, ...]:
                """g @ other^T and self^T @ g, as (other @ g^T)^T and (g^T @ self)^T: self
                and other enter as the forward pass masked them, so neither is opened again
                (`_beaver`), nor is g^T, opened once for both."""
                gt = g.t()
                return other.matmul(gt).t(), gt.matmul(self).t()

            return self._record(out, (self, other), backward)
        encoded = self._encode(other)
        shape = torch.matmul(_meta(self.shape), _meta(encoded.shape)).shape
        product = [call(s, "torch.matmul", s, encoded) for s in self.shares]
        out = self._like(protocols.truncate(self.parties, product, self._scale), shape)
        return self._record(out, (self,), lambda g: (g.matmul(torch.as_tensor(other).t()),))

    mm = matmul

    def div(self, other: Any) -> AdditiveSharingTensor:
        """Division by a public number (a positive int divides exactly, up to rounding)."""
        if isinstance(other, AdditiveSharingTensor):
            raise NotImplementedError(
                "division by a shared value is not supported; divide by a public number"
            )
        if isinstance(other, int) and not isinstance(other, bool) and other > 0:
            out = self._like(protocols.truncate(self.parties, self.shares, other))
            return self._record(out, (self,), lambda g: (g / other,))
        return self.mul(1.0 / other)

    def pow(self, exponent: int) -> AdditiveSharingTensor:
        if not isinstance(exponent, int) or exponent < 1:
            raise NotImplementedError(
                f"shared tensors take whole positive powers, not {exponent!r}"
            )
        out = self
        for _ in range(exponent - 1):
            out = out * self
        return out

    def sum(self, dim: Any = None, keepdim: bool = False) -> AdditiveSharingTensor:
        if dim is None:
            out = self._like(self._local("torch.sum"), torch.Size([]))
        else:
            shape = _meta(self.shape).sum(dim, keepdim).shape
            out = self._like(self._local("torch.sum", dim, keepdim), shape)
        return self._record(out, (self,), lambda g: (g._expand_back(self.shape, dim, keepdim),))

    def _expand_back(self, shape: torch.Size, dim: Any, keepdim: bool) -> AdditiveSharingTensor:
        g = self
        if dim is not None and not keepdim:
            for d in sorted(d % len(shape) for d in ([dim] if isinstance(dim, int) else dim)):
                g = g.unsqueeze(d)
        elif dim is None:
            g = g.view(*([1] * len(shape))) if shape else g
        return g._like(g._local("torch.Tensor.expand", list(shape)), shape).contiguous()

    def _sum_to(self, shape: torch.Size) -> AdditiveSharingTensor:
        """A gradient summed back over the dimensions broadcasting added."""
        g = self
        while g.dim() > len(shape):
            g = g.sum(0)
        for d, size in enumerate(shape):
            if size == 1 and g.shape[d] != 1:
                g = g.sum(d, keepdim=True)
        return g

    def refresh(self) -> AdditiveSharingTensor:
        """The same value under fresh shares."""
        out = self._like(protocols.refresh(self.parties, self.shares, self.shape))
        return self._record(out, (self,), lambda g: (g,))

    # ---- shape ----------------------------------------------------------------------------------

    def _reshaping(self, name: str, *args: Any) -> AdditiveSharingTensor:
        shape = getattr(_meta(self.shape), name)(*args).shape
        out = self._like(self._local(f"torch.Tensor.{name}", *args), shape)
        return self._record(out, (self,), lambda g: (g.reshape(*self.shape),))

    def view(self, *shape: Any) -> AdditiveSharingTensor:
        return self._reshaping("reshape", *_dims(shape))

    reshape = view

    def view_as(self, other: Any) -> AdditiveSharingTensor:
        return self.view(*other.shape)

    def flatten(self) -> AdditiveSharingTensor:
        return self.view(-1)

    def unsqueeze(self, dim: int) -> AdditiveSharingTensor:
        shape = _meta(self.shape).unsqueeze(dim).shape
        out = self._like(self._local("torch.Tensor.unsqueeze", dim), shape)
        return self._record(out, (self,), lambda g: (g.reshape(*self.shape),))

    def contiguous(self) -> AdditiveSharingTensor:
        out = self._like(self._local("torch.Tensor.contiguous"))
        return self._record(out, (self,), lambda g: (g,))

    def t(self) -> AdditiveSharingTensor:
        out = self._like(self._local("torch.Tensor.t"), _meta(self.shape).t().shape)
        return self._record(out, (self,), lambda g: (g.t(),))

    def __getitem__(self, key: Any) -> AdditiveSharingTensor:
        """Indexing (basic: ints and slices), without a gradient."""
        if self.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(
                "indexing a shared tensor that requires grad is not supported"
            )
        shape = _meta(self.shape)[key].shape
        return self._like(self._local("operator.getitem", key), shape)

    def select(self, dim: int, index: int) -> AdditiveSharingTensor:
        return self._like(
            self._local("torch.Tensor.select", dim, index),
            _meta(self.shape).select(dim, index).shape,
        )

    # ---- comparison -----------------------------------------------------------------------------

    def _negative(self) -> AdditiveSharingTensor:
        """Shared integer bits: [self < 0]."""
        bits = protocols.sign_bit(self.parties, self.shares, self.shape)
        return self._like(bits, precision=None)

    def _as_result(self, bits: AdditiveSharingTensor) -> AdditiveSharingTensor:
        """Bits at this tensor's precision (1 -> 1.0), as PySyft's comparisons give them."""
        if self._scale == 1:
            return self._like(bits.shares, bits.shape)
        return self._like(bits._local("torch.mul", self._scale), bits.shape)

    def _compare(self, other: Any, flip: bool, negate: bool) -> AdditiveSharingTensor:
        diff = self.neg().add(other) if flip else self.sub(other)
        with torch.no_grad():
            bits = diff._negative()
            if negate:
                bits = bits._one_minus()
        return self._as_result(bits)

    def gt(self, other: Any) -> AdditiveSharingTensor:
        return self._compare(other, flip=True, negate=False)

    def lt(self, other: Any) -> AdditiveSharingTensor:
        return self._compare(other, flip=False, negate=False)

    def ge(self, other: Any) -> AdditiveSharingTensor:
        return self._compare(other, flip=False, negate=True)

    def le(self, other: Any) -> AdditiveSharingTensor:
        return self._compare(other, flip=True, negate=True)

    def eq(self, other: Any) -> AdditiveSharingTensor:
        """[self == other] = 1 - [self < other] - [self > other]."""
        with torch.no_grad():
            diff = self - other
            lower = diff._negative()
            upper = (-diff)._negative()
            bits = (lower + upper)._one_minus()
        return self._as_result(bits)

    __gt__, __lt__, __ge__, __le__ = gt, lt, ge, le

    def __eq__(self, other: Any) -> AdditiveSharingTensor:  # type: ignore[override]
        return self.eq(other)

    __hash__ = object.__hash__

    def relu(self) -> AdditiveSharingTensor:
        """max(x, 0) = x * [x >= 0]; the gradient is g * [x >= 0]."""
        with torch.no_grad():
            positive = self._negative()._one_minus()
        out = self._mul_bits(positive)
        return self._record(out, (self,), lambda g: (g._mul_bits(positive),))

    def max(self, dim: int | None = None) -> Any:
        """The largest value (and, along `dim`, its index too), by pairwise comparisons."""
        if dim is None:
            return self.flatten()._max_along(0)[0]
        return self._max_along(dim)

    def argmax(self, dim: int | None = None) -> AdditiveSharingTensor:
        if dim is None:
            return self.flatten()._max_along(0)[1]
        return self._max_along(dim)[1]

    def _max_along(self, dim: int) -> tuple[AdditiveSharingTensor, AdditiveSharingTensor]:
        with torch.no_grad():
            best = self.select(dim, 0)
            index = best._public(torch.zeros(best.shape, dtype=torch.long))._like_integers()
            for j in range(1, self.shape[dim]):
                candidate = self.select(dim, j)
                larger = (best - candidate)._negative()  # [candidate > best]
                best = best + (candidate - best)._mul_bits(larger)
                index = index + (j - index)._mul_bits(larger)
            return best, self._as_result(index)

    def _like_integers(self) -> AdditiveSharingTensor:
        """The same shares read as integers (a public 0 encodes to 0 either way)."""
        return self._like(self.shares, precision=None)

    def _one_minus(self) -> AdditiveSharingTensor:
        """1 - bits, for shared integer bits."""
        return self.neg().add(1)

    # ---- operators and torch functions ----------------------------------------------------------

    def __add__(self, other: Any) -> AdditiveSharingTensor:
        return self.add(other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> AdditiveSharingTensor:
        return self.sub(other)

    def __rsub__(self, other: Any) -> AdditiveSharingTensor:
        return self.neg().add(other)

    def __mul__(self, other: Any) -> AdditiveSharingTensor:
        return self.mul(other)

    __rmul__ = __mul__

    def __matmul__(self, other: Any) -> AdditiveSharingTensor:
        return self.matmul(other)

    def __truediv__(self, other: Any) -> AdditiveSharingTensor:
        return self.div(other)

    def __pow__(self, exponent: int) -> AdditiveSharingTensor:
        return self.pow(exponent)

    def __neg__(self) -> AdditiveSharingTensor:
        return self.neg()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            out = x.matmul(weight.t())
            return out if bias is None else out + bias
        if func in (F.relu, torch.relu, torch.Tensor.relu):
            return args[0].relu()
        method = _TORCH_METHODS.get(func)
        if method is not None:
            return getattr(args[0], method)(*args[1:], **kwargs)
        name = getattr(func, "__name__", repr(func))
        raise NotImplementedError(
            f"{name} is not defined on shared tensors; they support + - * @ / **, sum, view, "
            "comparisons, relu, max/argmax and F.linear (docs/smpc.md)"
        )


_TORCH_METHODS = {
    torch.add: "add",
    torch.sub: "sub",
    torch.mul: "mul",
    torch.matmul: "matmul",
    torch.mm: "matmul",
    torch.sum: "sum",
    torch.neg: "neg",
    torch.argmax: "argmax",
    torch.max: "max",
}


def _negated(value: Any) -> Any:
    return -torch.as_tensor(value) if isinstance(value, torch.Tensor) else -value


def _dims(shape: tuple) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], list | tuple | torch.Size):
        return tuple(shape[0])
    return tuple(shape)
