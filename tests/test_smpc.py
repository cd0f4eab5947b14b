"""SMPC tensors (tether.privacy.smpc): the ring and its randomness, the fast matmul against the
int64 reference, the protocols' results against plain PyTorch, and the errors bad input gets.
The tutorials that use them are tests/test_tutorial_part09.py, part10 and part12bis."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import tether as sy
from tether import errors
from tether.node import Node
from tether.ops import PUBLISHED
from tether.privacy.smpc import AdditiveSharingTensor, RingError, ops, protocols, ring
from tether.privacy.smpc.dealing import DealingKey
from tether.privacy.smpc.limbs import limb_matmul, ring_matmul
from tether.wire import Call, Failure, Get, Value

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def parties():
    hook = sy.TorchHook(torch)
    return (
        sy.VirtualWorker(hook, id="bob"),
        sy.VirtualWorker(hook, id="alice"),
        sy.VirtualWorker(hook, id="provider"),
    )


def test_limb_matmul_is_the_int64_matmul_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    for m, k, n in [(64, 784, 128), (128, 64, 784), (3, 1, 5), (10, 1100, 7)]:
        a = torch.randint(-(2**63), 2**63 - 1, (m, k), generator=g)
        b = torch.randint(-(2**63), 2**63 - 1, (k, n), generator=g)
        assert torch.equal(limb_matmul(a, b), a @ b)
        assert torch.equal(ring_matmul(a, b), a @ b)  # whichever path this CPU chose
    edge = torch.tensor([[-(2**63), 2**63 - 1, -1, 0]])
    assert torch.equal(limb_matmul(edge, edge.t()), edge @ edge.t())
    # The largest sums each path meets: limbs at their maximum over 128 terms (five products,
    # Karatsuba) and over 129 and 512 terms (six, in chunks of 512), both signs of the top limb.
    top = (1 << 22) - 1 + (((1 << 21) - 1) << 22)
    for k in (128, 129, 512, 513):
        for value in (top, top - 2**63, -1, -(2**63)):
            full = torch.full((3, k), value)
            assert torch.equal(limb_matmul(full, full.t()), full @ full.t()), (k, value)


def test_a_beaver_share_is_the_int64_formula_bit_for_bit() -> None:
    """A party's Beaver share (its products by `ring_matmul`, either path) against the textbook
    c + delta @ (b [+ epsilon]) + a @ epsilon in int64 matmul."""
    g = torch.Generator().manual_seed(2)

    def ring(*shape: int) -> torch.Tensor:
        return torch.randint(-(2**63), 2**63 - 1, shape, generator=g)

    for m, k, n in [(64, 784, 128), (784, 64, 128), (3, 1, 5)]:
        c, a, b, delta, epsilon = ring(m, n), ring(m, k), ring(k, n), ring(m, k), ring(k, n)
        for first in (True, False):
            right = b + epsilon if first else b
            expected = c + delta @ right + a @ epsilon
            got = ops.beaver(c, a, b, delta, epsilon, "matmul", first)
            assert torch.equal(got, expected), (m, k, n, first)


def test_truncation_rounds_as_securemls_bit_for_bit() -> None:
    """`ring.truncate` (numpy's division by a scalar) against the textbook in torch's int64
    division: party 0 floor(x / d), party 1 -floor(-x / d), on uniform shares, the ring's
    edges, a 0-d share and a transposed one (not -2^63, where torch's -x wraps and numpy's
    floor(x / -d) keeps the integers' value)."""
    g = torch.Generator().manual_seed(5)
    edges = torch.tensor([-(2**63) + 1, -1001, -1000, -999, -1, 0, 1, 999, 1000, 2**63 - 1])
    shares = [
        torch.randint(-(2**63), 2**63 - 1, (64, 128), generator=g),
        edges,
        torch.tensor(-12345),
        torch.randint(-(2**63), 2**63 - 1, (9, 4), generator=g).t(),
    ]
    for x in shares:
        for d in (1, 3, 64, 1000, 2**40):
            assert torch.equal(ring.truncate(x, d, 0), torch.div(x, d, rounding_mode="floor"))
            assert torch.equal(ring.truncate(x, d, 1), -torch.div(-x, d, rounding_mode="floor"))


def test_a_single_share_is_uniform_over_the_ring_whatever_the_secret() -> None:
    """Each byte of a share is uniform (chi-square over 256 values), for a secret of zeros and
    for a secret of large values alike, and the two shares' bytes have the same distribution."""
    n = 20_000
    for secret in (torch.zeros(n, dtype=torch.int64), torch.full((n,), 2**40 + 12345)):
        share = ring.split(secret, 2)[0]
        assert torch.equal(ring.reconstruct(ring.split(secret, 2)), secret)
        counts = torch.bincount(share.view(torch.uint8).long(), minlength=256).double()
        expected = 8 * n / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 255 + 5 * math.sqrt(2 * 255)  # 255 degrees of freedom, 5 sigma
        top_bit = float((share < 0).double().mean())
        assert abs(top_bit - 0.5) < 0.02


def test_fixed_precision_arithmetic_matches_plain_pytorch(parties) -> None:
    bob, alice, provider = parties
    g = torch.Generator().manual_seed(1)
    x, y, w = (
        torch.randn(8, 5, generator=g),
        torch.randn(8, 5, generator=g),
        torch.randn(5, 3, generator=g),
    )
    sx = x.fix_precision().share(bob, alice, crypto_provider=provider)
    sy_ = y.fix_precision().share(bob, alice, crypto_provider=provider)
    sw = w.fix_precision().share(bob, alice, crypto_provider=provider)
    checks = {
        "add": (sx + sy_, x + y),
        "sub": (sx - sy_, x - y),
        "mul": (sx * sy_, x * y),
        "matmul": (sx @ sw, x @ w),
        "public": (sx * 2.5 - 1, x * 2.5 - 1),
        "div": (sx / 4, x / 4),
        "square-sum": ((sx**2).sum(), (x**2).sum()),
        "linear": (F.linear(sx, sw.t(), sy_[0, :3]), F.linear(x, w.t(), y[0, :3])),
    }
    for name, (shared, plain) in checks.items():
        got = shared.get().float_precision()
        assert got.shape == plain.shape, name
        assert (got - plain).abs().max() < 0.01, name


def test_comparisons_relu_and_argmax_are_exact(parties) -> None:
    bob, alice, provider = parties
    values = torch.tensor([-(2**40), -1, 0, 1, 7, 2**40, -5, 3])
    other = torch.tensor([3, -1, 0, 2, 7, -(2**40), -6, 3])
    sx = values.share(bob, alice, crypto_provider=provider)
    so = other.share(bob, alice, crypto_provider=provider)
    for name, fn in {
        "gt": torch.gt,
        "lt": torch.lt,
        "ge": torch.ge,
        "le": torch.le,
        "eq": torch.eq,
    }.items():
        assert torch.equal(getattr(sx, name)(so).get(), fn(values, other).long()), name
    reals = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    shared = reals.fix_precision().share(bob, alice, crypto_provider=provider)
    assert torch.equal(shared.relu().get().float_precision(), reals.relu().mul(1000).round() / 1000)
    assert torch.equal(shared.argmax(dim=1).get().float_precision(), reals.argmax(dim=1).float())


def test_backward_gives_the_gradients_plain_pytorch_gives(parties) -> None:
    bob, alice, provider = parties
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(4, 6, generator=g), torch.randn(3, 6, generator=g, requires_grad=True)
    sx = x.fix_precision().share(bob, alice, crypto_provider=provider)
    sw = w.detach().fix_precision().share(bob, alice, crypto_provider=provider, requires_grad=True)
    ((F.relu(F.linear(sx, sw)) - 1) ** 2).sum().backward()
    ((F.relu(F.linear(x, w)) - 1) ** 2).sum().backward()
    assert (sw.grad.get().float_precision() - w.grad).abs().max() < 0.05


def test_a_value_is_opened_once_however_many_products_it_enters(parties) -> None:
    """Each operand's Beaver mask is kept with its shares (SecureML's reuse of masked
    matrices): multiplying the same shares again opens nothing, so the parties answer no Get
    until a result is opened; new shares (an SGD step) are masked afresh; results stay exact."""
    bob, alice, provider = parties
    x = torch.arange(6).reshape(2, 3).share(bob, alice, crypto_provider=provider)
    w = torch.arange(12).reshape(3, 4).share(bob, alice, crypto_provider=provider)
    plain_x, plain_w = torch.arange(6).reshape(2, 3), torch.arange(12).reshape(3, 4)
    assert torch.equal((x @ w).get(), plain_x @ plain_w)
    gets: list[int] = []
    for worker in (bob, alice):
        transport = worker.client.transport

        def counting(commands, adopted=frozenset(), exchange=transport.exchange):
            gets.extend(len(c.ids) for c in commands if isinstance(c, Get))
            return exchange(commands, adopted)

        transport.exchange = counting
    again, square, both = x @ w, x * x, (x * x) * x
    for worker in (bob, alice):
        worker.client.flush()
    assert gets == [1, 1]  # only x * x, the new value entering `both`, is opened
    assert torch.equal(again.get(), plain_x @ plain_w)
    assert torch.equal(square.get(), plain_x * plain_x)
    assert torch.equal(both.get(), plain_x**3)
    x.shares = (x + 1).shares  # new shares: a new value, masked afresh
    assert torch.equal((x @ w).get(), (plain_x + 1) @ plain_w)


def test_two_sgd_steps_of_an_mlp_give_plain_pytorchs_gradients(parties) -> None:
    """The backward pass opens each activation, weight and gradient once (the forward pass's
    masks are used again); every parameter's and the input's gradient, over two SGD steps
    (the input's mask is kept from one to the next, the weights' are not), is plain
    PyTorch's to within fixed precision."""
    bob, alice, provider = parties
    torch.manual_seed(4)
    plain = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    shared = (
        copy.deepcopy(plain)
        .fix_precision()
        .share(bob, alice, crypto_provider=provider, requires_grad=True)
    )
    data, target = torch.randn(4, 6), torch.randn(4, 3)
    x = data.fix_precision().share(bob, alice, crypto_provider=provider, requires_grad=True)
    y = target.fix_precision().share(bob, alice, crypto_provider=provider)
    plain_x = data.clone().requires_grad_(True)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    shared_opt = torch.optim.SGD(shared.parameters(), lr=0.1).fix_precision()
    for _ in range(2):
        plain_opt.zero_grad()
        plain_x.grad = None
        ((plain(plain_x) - target) ** 2).sum().backward()
        plain_opt.step()
        shared_opt.zero_grad()
        x.grad = None
        ((shared(x) - y) ** 2).sum().backward()
        for got, want in [
            *zip(shared.parameters(), plain.parameters(), strict=True),
            (x, plain_x),
        ]:
            opened = (got.grad * 1).get()  # a copy: opening frees the shares it fetches
            assert (opened.float_precision() - want.grad).abs().max() < 0.05
        shared_opt.step()


def test_shares_are_ordinary_objects_on_the_workers(parties) -> None:
    """Each worker stores one int64 tensor per share, and holds nothing else once the value
    is opened; a worker with the training release policy takes part like an open one."""
    bob, _, provider = parties
    careful = sy.VirtualWorker(id="careful", release="training")
    shared = torch.tensor([5, -7]).share(bob, careful, crypto_provider=provider)
    [share] = bob._objects.values()
    assert share.dtype == torch.int64 and share.shape == (2,)
    assert torch.equal((shared * shared).get(), torch.tensor([25, 49]))
    assert torch.equal(shared.get(), torch.tensor([5, -7]))
    assert bob._objects == {} and careful._objects == {}
    assert provider._objects == {}  # its dealing seeds are in its crypto store, not here


def test_the_provider_sends_only_the_last_partys_correction(parties) -> None:
    """Dealing from seeds: for a product the provider's replies carry one tensor, the last
    party's share of c (the output's shape); the triples' shares never cross the wire. Over
    a training-style sequence the parties' opened values decode to x and y only with the
    seeds, which no reply carries."""
    bob, alice, provider = parties
    x = torch.arange(6).reshape(2, 3).share(bob, alice, crypto_provider=provider)
    w = torch.arange(12).reshape(3, 4).share(bob, alice, crypto_provider=provider)
    assert torch.equal(
        (x @ w).get(), torch.arange(6).reshape(2, 3) @ torch.arange(12).reshape(3, 4)
    )
    sent: list[torch.Size] = []
    transport = provider.client.transport
    exchange = transport.exchange

    def recording(commands, adopted=frozenset()):
        replies = exchange(commands, adopted)
        sent.extend(v.shape for r in replies() if isinstance(r, Value) for v in r.value)
        return replies

    transport.exchange = recording
    try:
        assert torch.equal(
            (x @ w).get(), torch.arange(6).reshape(2, 3) @ torch.arange(12).reshape(3, 4)
        )
    finally:
        transport.exchange = exchange
    assert sent == [torch.Size([2, 4])]


def test_a_dealing_key_never_leaves_and_its_nonces_only_go_up(parties) -> None:
    """A party's dealing key is kept on its worker, out of `_objects`, and a Get of it is
    refused; a party refuses a nonce at or below one its seed has drawn: the same masks
    twice would open x - x' to whoever sees both openings."""
    bob, alice, provider = parties
    x = torch.tensor([3]).share(bob, alice, crypto_provider=provider)
    assert int((x * x).get()) == 9
    _, _, keys = protocols._keys(protocols.Parties((bob, alice), provider), "test")
    node = bob.node
    assert isinstance(bob.store.objects[keys[0].id].value, DealingKey)
    assert all(not isinstance(v, DealingKey) for v in bob._objects.values())
    [refused] = node.run([Get([keys[0].id])], "local").replies
    assert refused.kind == "TypeError" and "cannot leave the node as data" in refused.message
    again = [
        Call(
            ops.PATHS["beaver_open"],
            [keys[0].id, _I, _I, 2**62, "mul", [2], [2], False, False],
            {},
            out,
            refs=1,
        )
        for out in ([1001, 1002, 1003, 1004, 1005], [1006, 1007, 1008, 1009, 1010])
    ]
    replies = node.run(again, "local").replies
    assert not isinstance(replies[0], Failure)
    assert replies[1].kind == "ValueError" and "above the last one drawn" in replies[1].message
    with pytest.raises(errors.TetherError, match="above the last one drawn"):
        (x * x).get()  # the scientist's counter is behind the nonce drawn above


def test_a_party_refuses_a_triple_whose_operands_are_not_as_stated(parties) -> None:
    """With its real dealing key, a party refuses operands of another shape than the call
    states, and `same` (y is x, masked once) with a y given or of another shape."""
    bob, alice, provider = parties
    x = torch.tensor([3]).share(bob, alice, crypto_provider=provider)
    assert int((x * x).get()) == 9
    _, _, keys = protocols._keys(protocols.Parties((bob, alice), provider), "test")
    path, key = ops.PATHS["beaver_open"], keys[0].id
    cases = [
        [key, _I, _I, 2**40, "mul", [1], [2], False, False],
        [key, _I, _I, 2**40 + 1, "mul", [2], [2], True, False],
        [key, _I, None, 2**40 + 2, "mul", [2], [1], True, False],
    ]
    replies = [
        bob.node.run([Call(path, args, {}, [2000 + i, 2100 + i], refs=1)], "local").replies[0]
        for i, args in enumerate(cases)
    ]
    assert [r.kind for r in replies] == ["RingError", "ValueError", "ValueError"], replies


def test_a_provider_refuses_kept_masks_not_as_stated(parties) -> None:
    """With the parties' real dealing keys, the provider refuses a kept mask of another shape
    or dtype than the call states, and `same` with a second mask given."""
    bob, alice, provider = parties
    x = torch.tensor([3]).share(bob, alice, crypto_provider=provider)
    assert int((x * x).get()) == 9  # the dealing keys agreed
    provider_keys = protocols._keys(protocols.Parties((bob, alice), provider), "test")[1]
    path, keys = ops.PATHS["triple_correction"], [k.id for k in provider_keys]
    cases = [
        ["mul", [2], [2], 2**41, _LONG, None, False, *keys],
        ["mul", [2], [2], 2**41 + 1, _F, None, False, *keys],
        ["mul", [2], [2], 2**41 + 2, None, _I, True, *keys],
        ["mul", [2], [2], 2**41 + 3, _I, None, False, *keys],  # as stated: dealt
    ]
    replies = [
        provider.node.run(
            [Call(path, args, {}, [2200 + 2 * i, 2201 + 2 * i], refs=(1 << 7) | (1 << 8))],
            "local",
        ).replies[0]
        for i, args in enumerate(cases)
    ]
    kinds = [getattr(r, "kind", type(r).__name__) for r in replies]
    assert kinds == ["RingError", "RingError", "ValueError", "Done"], replies


def test_bad_input_gets_clear_errors(parties) -> None:
    bob, alice, provider = parties
    carol = sy.VirtualWorker(id="carol")
    x = torch.ones(3).fix_precision().share(bob, alice, crypto_provider=provider)
    with pytest.raises(ValueError, match="different precisions"):
        x + torch.ones(3).fix_precision(precision_fractional=2).share(
            bob, alice, crypto_provider=provider
        )
    with pytest.raises(errors.WorkerMismatchError, match="different workers"):
        x + torch.ones(3).fix_precision().share(bob, carol, crypto_provider=provider)
    without = torch.ones(3).fix_precision().share(bob, alice)
    with pytest.raises(errors.NotAllowedError, match="needs a crypto provider"):
        without * without
    with pytest.raises(errors.NotAllowedError, match="needs a crypto provider"):
        without > 0  # noqa: B015
    with pytest.raises(errors.NotAllowedError, match="holds a share too"):
        torch.ones(3).fix_precision().share(bob, alice, crypto_provider=bob)
    with pytest.raises(TypeError, match="fix_precision"):
        torch.ones(3).share(bob, alice)
    with pytest.raises(RingError, match="2\\^64 ring"):
        torch.ones(3).fix_precision().share(bob, alice, field=2**32)
    with pytest.raises(RingError, match="does not fit"):
        torch.tensor([1e20]).fix_precision()
    three = torch.ones(3, dtype=torch.long).share(bob, alice, carol, crypto_provider=provider)
    with pytest.raises(errors.NotAllowedError, match="exactly two parties"):
        three > 0  # noqa: B015
    # adopting shares already on the workers
    good = AdditiveSharingTensor.from_shares(
        [torch.tensor([1, 2]).send(bob), torch.tensor([3, 4]).send(alice)], provider
    )
    assert torch.equal(good.get(), torch.tensor([4, 6]))
    with pytest.raises(ValueError, match="one shape"):
        AdditiveSharingTensor.from_shares(
            [torch.tensor([1, 2]).send(bob), torch.tensor([3]).send(alice)]
        )
    with pytest.raises(RingError, match="not a 2\\^64 ring element"):
        AdditiveSharingTensor.from_shares(
            [torch.tensor([1, 2]).send(bob), torch.ones(2).send(alice)]
        )


def test_a_hostile_triple_request_is_refused_and_the_provider_keeps_serving(parties) -> None:
    *_, provider = parties
    node = provider.node
    path = ops.PATHS["triple_correction"]
    fresh = [None, None, False]  # no mask kept from before: both drawn
    huge = Call(path, ["matmul", [2**20, 2**20], [2**20, 2**20], 1, *fresh, 5, 6], {}, 1, 0, None)
    bad_op = Call(path, ["pow", [2], [2], 1, *fresh, 5, 6], {}, 2, 0, None)
    many = Call(path, ["mul", [2], [2], 1, *fresh, *range(1, 18)], {}, 3, 0, None)
    not_keys = Call(path, ["mul", [2], [2], 1, *fresh, 424242, 434343], {}, 4, 0, None)
    replies = node.run([huge, bad_op, many, not_keys], "mallory").replies
    assert [r.kind for r in replies] == ["LimitError", "ValueError", "LimitError", "TypeError"]
    assert "from 2 to 16, got 17" in replies[2].message
    assert "a dealing key was expected, got int" in replies[3].message
    x = torch.tensor([6]).share(parties[0], parties[1], crypto_provider=provider)
    assert torch.equal((x * x).get(), torch.tensor([36]))


def test_a_share_of_private_data_leaves_only_as_the_owner_allows(parties) -> None:
    """A worker under the `training` policy keeps its owner's data: a share computed from it
    is refused at egress like any other result (a uniform share is still derived data)."""
    _, alice, provider = parties
    owner = sy.VirtualWorker(id="owner", release="training")
    owner.publish("x", torch.tensor([1.5, 2.0]), tags=["#x"])
    [pointer] = owner.search("#x")
    with pytest.raises(errors.NotAllowedError, match="release policy is 'training'"):
        pointer.fix_precision().share(owner, alice, crypto_provider=provider)


_I, _F, _LONG = torch.tensor([1, 2]), torch.tensor([1.5, 2.0]), torch.tensor([1, 2, 3])
# Per op: argument lists a peer could send over the wire, each wrong in one way (shapes, types,
# dtypes, flags, sizes, costs, NaN).
_PUBLIC = torch.zeros(32, dtype=torch.uint8)
_UNKNOWN = 424242  # not a dealing key (only a worker's own ops make those)
_WORDS = torch.zeros(ops.LEVELS, 2, dtype=torch.int64)  # a comparison's AND triples
HOSTILE_ARGUMENTS = {
    "seed_key": [[0], ["k"]],
    "seed_pair": [[_I], [torch.zeros(31, dtype=torch.uint8)], [5], []],
    "seed_agree": [[_UNKNOWN, _PUBLIC], ["k", _PUBLIC], [_PUBLIC, _PUBLIC]],
    "triple_correction": [
        ["mul", [2], [3], 1, None, None, False, 5, 6],
        ["matmul", [-1], [2], 1, None, None, False, 5, 6],
        [True, [2], [2], 1, None, None, False, 5, 6],
        ["mul", "2", [2], 1, None, None, False, 5, 6],
        ["mul", [2], [2], 1, None, None, False, 5],
        ["mul", [2], [2], 1, None, None, False, _UNKNOWN, _UNKNOWN + 1],
        # kept masks: of another shape, not ring elements, or b given as well as `same`
        ["mul", [2], [2], 1, _LONG, None, False, _UNKNOWN, _UNKNOWN + 1],
        ["mul", [2], [2], 1, _F, None, False, _UNKNOWN, _UNKNOWN + 1],
        ["mul", [2], [2], 1, None, _I, True, _UNKNOWN, _UNKNOWN + 1],
        ["mul", [2], [3], 1, None, None, True, _UNKNOWN, _UNKNOWN + 1],
        ["mul", [2], [2], 1, None, None, "yes", _UNKNOWN, _UNKNOWN + 1],
    ],
    "compare_correction": [
        [[2], 1, 5],
        [[-3], 1, 5, 6],
        [[2**40, 2**40], 1, 5, 6],
        [[2], 1, _UNKNOWN, _UNKNOWN + 1],
    ],
    "zeros_correction": [[[2**62], 1, 5, 6], [[2], 1, 5], [[2], 1, _UNKNOWN, _UNKNOWN + 1]],
    "beaver_open": [
        [_UNKNOWN, _I, _I, 1, "mul", [2], [2], False, False],
        [_UNKNOWN, _I, _LONG, 1, "mul", [2], [2], False, False],
        [_UNKNOWN, _F, _F, 1, "mul", [2], [2], False, False],
        [_UNKNOWN, _I, _I, 1, "pow", [2], [2], False, False],
        [_UNKNOWN, _I, _I, 1, "mul", [2], [2], False, "yes"],
        [_UNKNOWN, _I, None, 1, "mul", [2], [2], "yes", False],
        [_UNKNOWN, _I, _I, 1, "mul", [2], [2], True, False],
        [_UNKNOWN, None, None, 1, "mul", [2**40], [2**40], False, False],
    ],
    "compare_open": [[_UNKNOWN, _I, 1, True], [_UNKNOWN, _F, 1, False], [_UNKNOWN, _I, 1, "no"]],
    "refresh_share": [[_UNKNOWN, _I, 1], [_UNKNOWN, _F, 1]],
    "split": [[_F, 2], [_I, 17], ["s", 2], [_I, 1]],
    "encode": [
        [_F, 10**8, 10],  # base^precision would be a 40 MB integer: refused before it is made
        [_F, -3, 10],
        [torch.tensor([float("nan")]), 3, 10],
        ["x", 3, 10],
        [_F, 3, 10**30],
    ],
    "beaver": [
        [_I, _I, _I, _LONG, _I, "mul", True],
        [_I, _I, _I, _I, _I, "pow", True],
        [_F, _F, _F, _F, _F, "mul", True],
        [_I, _I, _I, _I, _I, "mul", "yes"],
        [_I, _I, _I, _I, _I, "mul", True, 0],
        [_I, _I, _I, _I, _I, "matmul", False, 2.5],
    ],
    "truncate": [[_I, 0, 0], [_I, 2**70, 0], [_I, 2, "p"], [_F, 2, 0]],
    "level_masks": [
        [_I, _I, 10**30, _I, _I, True],
        [_I, _I, 3, _I, _I, True],
        [_I, _I, 1, _I, _I, "yes"],
        [_F, _F, 1, _F, _F, True],
    ],
    "and_close": [[_WORDS, _WORDS, _WORDS, _LONG, _I, True], [_F, _F, _F, _F, _F, True]],
    "level_close": [
        [_I, _I, 1, _I, _I, _I, _LONG, _I, True],
        [_I, _I, 1, _I, _I, _I, _I, _I, 1],
        [_I, _I, 64, _I, _I, _I, _I, _I, True],
    ],
    "msb_bit": [[_I, _LONG, _I], [_F, _F, _F]],
    "bit_to_ring": [[_I, _LONG, True], [_F, _F, True], [_I, _I, None]],
}


@pytest.mark.parametrize("release", ["open", "training", "strict"])
def test_every_smpc_op_refuses_what_a_hostile_peer_sends_and_the_node_keeps_serving(release):
    """Each `tether.smpc.*` op, sent malformed arguments over the raw protocol, fails with an
    error (none runs), under every release policy; a good call afterwards still works."""
    node = Node("target", release=release)
    calls, named = [], []
    for op, cases in HOSTILE_ARGUMENTS.items():
        for args in cases:
            calls.append(Call(ops.PATHS[op], args, {}, 100 + len(calls)))
            named.append(f"{op}{args!r}")
    assert set(HOSTILE_ARGUMENTS) == set(ops.PATHS)  # every op is attacked
    replies = node.run(calls, "mallory").replies
    ran = [
        name for name, reply in zip(named, replies, strict=True) if not isinstance(reply, Failure)
    ]
    assert not ran, ran
    good = Call(ops.PATHS["split"], [torch.tensor([1, 2, 3]), 2], {}, [1, 2])
    assert isinstance(node.run([good, Get([1])], "mallory").replies[1], Value)


@pytest.mark.parametrize("release", ["open", "training", "strict"])
def test_smpc_ops_on_published_data_release_only_as_the_policy_allows(release):
    """Sharing, encoding, truncating, masking with a seed's draws, dealing a triple on or
    taking a sign bit of the owner's private data makes derived data: it leaves an `open`
    node, never a `training` one, and only by an accepted request from a `strict` one (a
    share of it is uniform, but the sum of the shares is it; x - a is uniform, but a is on
    the node too)."""
    node = Node("owner", release=release)
    node.publish("x", torch.tensor([5, -7]))
    node.publish("f", torch.tensor([1.5, 2.0]))
    provider = X25519PrivateKey.generate().public_key().public_bytes_raw()
    derived = [
        Call(ops.PATHS["split"], [1, 2], {}, [10, 11], refs=1),
        Call(ops.PATHS["encode"], [2, 3, 10], {}, 12, refs=1),
        Call(ops.PATHS["truncate"], [1, 2, 0], {}, 13, refs=1),
        Call(ops.PATHS["msb_bit"], [1, 1, 1], {}, 14, refs=7),
        Call(ops.PATHS["seed_pair"], [torch.tensor(list(provider), dtype=torch.uint8)], {}, [3, 4]),
        Call(
            ops.PATHS["beaver_open"],
            [3, 1, 1, 1, "mul", [2], [2], False, False],
            {},
            [15, 16, 17, 18, 19],
            refs=7,
        ),
        Call(ops.PATHS["compare_open"], [3, 1, 2, False], {}, list(range(20, 27)), refs=3),
        # a provider dealing on the owner's data as a kept mask (a second seed first)
        Call(
            ops.PATHS["seed_pair"], [torch.tensor(list(provider), dtype=torch.uint8)], {}, [30, 31]
        ),
        Call(
            ops.PATHS["triple_correction"],
            ["mul", [2], [2], 5, 1, None, False, 3, 30],
            {},
            [32, 33],
            refs=(1 << 4) | (1 << 7) | (1 << 8),
        ),
    ]
    published = [Call(PUBLISHED, ["x"], {}, 1), Call(PUBLISHED, ["f"], {}, 2)]
    gets = [Get([i]) for i in (10, 11, 12, 13, 14, 15, 20, 32)]
    replies = node.run([*published, *derived, *gets], "scientist").replies
    released = replies[-len(gets) :]
    if release == "open":
        assert all(isinstance(r, Value) for r in released), released
        assert torch.equal(released[0].value[0] + released[1].value[0], torch.tensor([5, -7]))
    else:
        expected = "NotAllowedError" if release == "training" else "RequestPendingError"
        assert [r.kind for r in released] == [expected] * len(gets), released
