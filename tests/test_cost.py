"""Per-op cost bounds (tether.ops.cost; issue 22, class 7): every aten op is charged before it
runs, so the issue's bypasses of the path-level guards are refused before they allocate, while
real training steps fit the default budget.

`Charged` does what the Guard's dispatch mode will: `Budget.charge` before each aten op, then
the op. Attacks run under `memory_cap`, so a bound that failed would fail the test with a
MemoryError instead of taking the machine's memory."""

from __future__ import annotations

import contextlib
import re
import resource
import statistics
import time
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tether.errors import LimitError
from tether.federated.delegated.modelspec import describe
from tether.federated.delegated.training import fit
from tether.ops.cost import UNINITIALIZED, Budget, Estimates

aten = torch.ops.aten
MAX_ELEMENTS, MAX_FLOPS = 2**28, 2**36  # the defaults the node will give each command


class Charged(TorchDispatchMode):
    """Charge each aten op to `budget` before running it; `ran` lists the ops that ran."""

    def __init__(self, budget: Budget | None = None) -> None:
        super().__init__()
        self.budget = budget or Budget(MAX_ELEMENTS, MAX_FLOPS, estimates=Estimates())
        self.ran: list[torch._ops.OpOverload] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        self.budget.charge(func, args, kwargs)
        self.ran.append(func)
        return func(*args, **kwargs)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@contextlib.contextmanager
def memory_cap(extra: int = 2**30) -> Iterator[None]:
    """At most `extra` more bytes of address space inside: an allocation the bound missed
    raises instead of filling the machine's memory."""
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (now + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """torch loads its meta kernels (~75 MB, ~2 s) at the first meta run; not an attack's."""
    with Charged():
        nn.Conv2d(1, 2, 3)(torch.ones(1, 1, 5, 5)).sum().backward()
        torch.ones(2, 3) @ torch.ones(3, 2) + torch.ones(2, 1)


def mlp_step(batch: int = 64) -> Callable[[], None]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def conv_step(batch: int = 64) -> Callable[[], None]:
    """The PyTorch MNIST example's net, with Adadelta and gradient clipping."""
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10), nn.LogSoftmax(dim=1),
    )  # fmt: skip
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


# ---- the issue's bypasses, refused before they allocate ---------------------------------------


def wide_linear() -> nn.Module:
    """Linear(4, 2**25) with its 512 MB of weights as zero-size expanded views."""
    layer = nn.Linear(4, 2**25, device="meta")
    layer.weight = nn.Parameter(torch.zeros(1, 1).expand(2**25, 4))
    layer.bias = nn.Parameter(torch.zeros(1).expand(2**25))
    return nn.Sequential(layer)


def fit_spec_with_huge_transposed_conv() -> None:
    layers = nn.Sequential(nn.ConvTranspose2d(1, 1, 3, stride=700), nn.Flatten(), nn.LogSoftmax(1))
    data, targets = torch.ones(4, 1, 40, 40), torch.zeros(4, dtype=torch.long)
    fit(describe(layers), data, targets, {"batch_size": 2})


square = torch.ones(4096, 4096)
huge_square = torch.ones(1, 1).expand(16384, 16384)  # what ones(16384, 16384) gives, in 4 bytes
BYPASSES: dict[str, tuple[Callable[[], object], str]] = {
    # name: (attack, the op refused and why)
    "mm of two 16384x16384": (lambda: torch.mm(huge_square, huge_square), "aten.mm.default: over"),
    "mm of two 4096x4096": (lambda: square @ square, "aten.mm.default: over"),
    "einsum (a bmm)": (lambda: torch.einsum("ij,jk->ik", square, square), "aten.bmm.default: over"),
    "arange with tensor bounds": (
        lambda: torch.arange(torch.tensor(0), torch.tensor(2**31)),
        "aten.arange.start: a result",
    ),
    "cartesian_prod": (
        lambda: torch.cartesian_prod(torch.arange(20000), torch.arange(20000)),
        "aten.expand.default: a result",
    ),
    "Sequential(Linear(4, 2**25)) intermediate": (
        lambda: wide_linear()(torch.ones(64, 4)),
        "aten.addmm.default: a result",
    ),
    "ConvTranspose2d(stride=700) in a fit spec": (
        fit_spec_with_huge_transposed_conv,
        "aten.convolution.default: a result",
    ),
    "expand": (lambda: torch.ones(1).expand(2**30) + 1, "aten.expand.default: a result"),
    "expand then a broadcast add": (
        lambda: torch.ones(1).expand(2**28) + torch.ones(2, 1),
        "aten.add.Tensor: a result",
    ),
    "broadcast masked_select": (
        lambda: torch.masked_select(torch.ones(1, 2**15), torch.ones(2**15, 1, dtype=torch.bool)),
        "aten.masked_select.default: a result",
    ),
    "bincount of a huge value": (
        lambda: torch.bincount(torch.tensor([2**40])),
        "aten.bincount.default: a result",
    ),
    "repeat_interleave whose int64 sum wraps": (
        lambda: torch.repeat_interleave(torch.tensor([2**62] * 4)),
        "aten.repeat_interleave.Tensor: a result",
    ),
    "one_hot of a huge value": (
        lambda: F.one_hot(torch.tensor([2**30])),
        "aten.zeros.default: a result",
    ),
    "resize_": (lambda: torch.zeros(3).resize_(2**40), "aten.resize_.default: a result"),
    "index_fill with one index repeated": (
        lambda: torch.zeros(16, 2**16).index_fill_(0, torch.zeros(2**21, dtype=torch.long), 1.0),
        "aten.index_fill_.int_Scalar: over",
    ),
    "index_put with one index repeated": (
        lambda: torch.zeros(16, 2**16).index_put_(
            (torch.zeros(2**21, dtype=torch.long),), torch.tensor(1.0)
        ),
        "aten.index_put_.default: over",
    ),
    "max_pool2d with a huge window": (
        lambda: F.max_pool2d(torch.ones(1, 1, 1, 1).expand(1, 1, 2000, 2000), 1000, stride=1),
        "aten.max_pool2d_with_indices.default: over",
    ),
    "cdist of two big sets": (
        lambda: torch.cdist(
            torch.ones(1, 1).expand(10000, 1000), torch.ones(1, 1).expand(10000, 1000)
        ),
        "aten._euclidean_dist.default: over",
    ),
    "split into 2**21 views": (lambda: torch.zeros(2**21).split(1), "aten.split.Tensor: over"),
}


@pytest.mark.parametrize("name", list(BYPASSES))
def test_bypass_is_refused_before_it_allocates(name: str) -> None:
    attack, refusal = BYPASSES[name]
    mode = Charged()
    before, start = rss(), time.perf_counter()
    with memory_cap(), pytest.raises(LimitError) as refused, mode:
        attack()
    assert str(refused.value).startswith(refusal)
    assert time.perf_counter() - start < 10
    assert rss() - before < 64 * 2**20  # the op's own result would take gigabytes


def test_cartesian_prod_of_the_issue_is_refused_at_a_tighter_limit() -> None:
    """The issue's two 5000-element tensors make 25 M pairs: within the default 2**28 per
    result, refused where the node sets 2**24."""
    mode = Charged(Budget(2**24, MAX_FLOPS, estimates=Estimates()))
    with pytest.raises(LimitError, match=r"aten\.expand\.default: a result"), mode:
        torch.cartesian_prod(torch.arange(5000), torch.arange(5000))
    assert aten.clone.default not in mode.ran


def test_a_mask_is_bounded_by_its_size_not_its_values() -> None:
    """x[mask] has at most as many elements as the mask, whichever of them are set."""
    x = torch.ones(100, 100)
    mask = torch.zeros(100, 100, dtype=torch.bool)
    with Charged(Budget(10**4, MAX_FLOPS, estimates=Estimates())):
        assert x[mask].numel() == 0
    mode = Charged(Budget(9999, MAX_FLOPS, estimates=Estimates()))
    with pytest.raises(LimitError, match=r"aten\.index\.Tensor: a result"), mode:
        x[mask]
    assert aten.index.Tensor not in mode.ran


def test_a_loop_of_views_runs_out_of_results() -> None:
    """tensor_split is a composite: its slices reach the mode one by one, each an object."""
    mode = Charged(Budget(MAX_ELEMENTS, MAX_FLOPS, max_results=1000, estimates=Estimates()))
    with pytest.raises(LimitError, match="max_results=1000"), mode:
        torch.tensor_split(torch.zeros(4), 10**8)
    assert 990 < mode.ran.count(aten.slice.Tensor) <= 1000


# ---- real training fits the default budget ----------------------------------------------------


def work_of(step: Callable[[], None]) -> int:
    """What one call of `step` takes from a default budget; LimitError if it does not fit."""
    mode = Charged()
    with mode:
        step()
    return MAX_FLOPS - mode.budget.flops_left


def test_mnist_training_steps_fit_the_default_budget() -> None:
    # the MLP's forward products, and as many again for its weights' gradients
    assert 2 * 2 * 64 * (784 * 200 + 200 * 10) < work_of(mlp_step()) < MAX_FLOPS // 100
    # the second convolution's forward alone is 2 * 64 * (64 * 24 * 24) * (32 * 3 * 3)
    assert 2 * 64 * (64 * 24 * 24) * (32 * 3 * 3) < work_of(conv_step()) < MAX_FLOPS // 4


def test_a_repeated_training_step_hits_the_memo() -> None:
    estimates = Estimates()
    for step in (mlp_step(), conv_step()):
        with Charged(Budget(MAX_ELEMENTS, MAX_FLOPS, estimates=estimates)):
            step()
        misses, hits = estimates.misses, estimates.hits
        for _ in range(3):
            with Charged(Budget(MAX_ELEMENTS, MAX_FLOPS, estimates=estimates)):
                step()
        assert estimates.misses == misses  # the same shapes again: no meta run
        assert estimates.hits - hits >= 3 * 10


def test_bounds_read_from_values_are_not_memoized() -> None:
    """bincount's bound reads the largest value: a tensor of the same shape may hold more."""
    estimates = Estimates()
    with Charged(Budget(MAX_ELEMENTS, MAX_FLOPS, estimates=estimates)):
        assert torch.bincount(torch.tensor([3])).tolist() == [0, 0, 0, 1]
    with (
        pytest.raises(LimitError, match="bincount"),
        Charged(Budget(MAX_ELEMENTS, MAX_FLOPS, estimates=estimates)),
    ):
        torch.bincount(torch.tensor([2**40]))


# ---- what a refusal says ----------------------------------------------------------------------

SECRET = 987654321  # > 2**28: a size taken from a value


@pytest.mark.parametrize(
    "attack",
    [
        lambda: torch.arange(torch.tensor(0), torch.tensor(SECRET)),
        lambda: torch.zeros(torch.tensor(SECRET).item()),
        lambda: torch.bincount(torch.tensor([SECRET])),
        lambda: torch.repeat_interleave(torch.tensor([SECRET])),
        lambda: F.one_hot(torch.tensor([SECRET])),
        lambda: torch.arange(torch.tensor(SECRET), torch.tensor(0)),  # its shape rule fails
    ],
)
def test_refusals_carry_no_values(attack: Callable[[], object]) -> None:
    with pytest.raises(LimitError) as refused, Charged():
        attack()
    message = str(refused.value)
    assert message.startswith("aten.") or message.startswith("cannot bound the cost of aten.")
    assert set(re.findall(r"\d{3,}", message)) <= {str(MAX_ELEMENTS), str(MAX_FLOPS)}


def test_a_failing_estimate_refuses_and_keeps_the_cause() -> None:
    with pytest.raises(LimitError) as refused, Charged():
        torch.ones(2, 3) @ torch.ones(4, 5)
    assert str(refused.value) == "cannot bound the cost of aten.mm.default; refused"
    assert isinstance(refused.value.__cause__, RuntimeError)  # torch's own shape error
    with pytest.raises(LimitError, match="cannot bound the cost"), Charged():
        torch.ones(3).to_sparse() + 1  # a sparse argument: no meta copy, no bound


# ---- ops without a formula, and the formulas for cheap ones -----------------------------------

NO_FORMULA = {
    "linalg.inv": lambda: torch.linalg.inv(torch.eye(3)),
    "linalg.svd": lambda: torch.linalg.svd(torch.eye(3)),
    "linalg.qr": lambda: torch.linalg.qr(torch.eye(3)),
    "linalg.cholesky": lambda: torch.linalg.cholesky(torch.eye(3)),
    "linalg.eigh": lambda: torch.linalg.eigh(torch.eye(3)),
    "det": lambda: torch.det(torch.eye(3)),
    "matrix_exp": lambda: torch.matrix_exp(torch.eye(3)),
    "solve_triangular": lambda: torch.linalg.solve_triangular(
        torch.eye(3), torch.eye(3), upper=True
    ),
    "fft.fft": lambda: torch.fft.fft(torch.ones(8)),
    "stft": lambda: torch.stft(torch.ones(64), 16, window=torch.ones(16), return_complex=True),
}


@pytest.mark.parametrize("name", list(NO_FORMULA))
def test_ops_without_a_formula_are_refused(name: str) -> None:
    mode = Charged()
    with pytest.raises(LimitError, match="no cost formula"), mode:
        NO_FORMULA[name]()
    assert not [op for op in mode.ran if re.search("linalg|fft|svd|qr|det|exp", str(op))]


def test_cheap_ops_with_formulas_run() -> None:
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    with Charged():
        assert torch.cdist(torch.ones(30, 5), torch.zeros(40, 5)).shape == (30, 40)
        torch.linalg.vector_norm(torch.ones(4))
        F.scaled_dot_product_attention(q, q, q).sum().backward()
        nn.LSTM(4, 8)(torch.randn(3, 2, 4))[0].sum().backward()
        x = torch.randn(64, 10)
        x[x > 0] = 0.0
        assert x[x < 0].numel() == int((x < 0).sum())


# ---- estimation itself is bounded -------------------------------------------------------------


def test_estimating_a_factory_allocates_nothing() -> None:
    """The meta run of zeros() is told the meta device; on the CPU it would take 4 GiB."""
    budget = Budget(2**31, MAX_FLOPS, estimates=Estimates())
    before = rss()
    with memory_cap(2**29):
        budget.charge(aten.zeros.default, ([2**30],), {"device": torch.device("cpu")})
        budget.charge(aten.empty.memory_format, ([2**30],), {})
    assert rss() - before < 64 * 2**20


def test_every_op_pays_for_what_it_reads_and_makes() -> None:
    """equal() reads both tensors, item() makes a Python number, _foreach_add_ writes three
    tensors in place and _foreach_add makes three."""
    budget = Budget(MAX_ELEMENTS, MAX_FLOPS, estimates=Estimates())
    a = torch.ones(1000)
    budget.charge(aten.equal.default, (a, a), {})
    budget.charge(aten._local_scalar_dense.default, (a[:1],), {})
    budget.charge(aten._foreach_add_.Scalar, ([a, a, a], 1.0), {})
    assert MAX_FLOPS - budget.flops_left > 2000 + 1 + 3000
    assert budget.max_results - budget.results_left == 3
    budget.charge(aten._foreach_add.Scalar, ([a, a, a], 1.0), {})
    assert budget.max_results - budget.results_left == 3 + 3


def test_the_memo_stays_bounded() -> None:
    estimates = Estimates(capacity=100)
    budget = Budget(MAX_ELEMENTS, 2**62, max_results=2**30, estimates=estimates)
    for n in range(1000):  # a new key each time: arange's bound
        budget.charge(aten.arange.default, (n,), {})
    assert estimates.misses == 1000
    assert 10 < len(estimates._memo) <= 100


# ---- zero-fill ---------------------------------------------------------------------------------


def test_uninitialized_names_every_empty_factory() -> None:
    x = torch.ones(2, 3)
    factories = [
        lambda: torch.empty(3),
        lambda: torch.empty_like(x),
        lambda: x.new_empty(3),
        lambda: torch.empty_strided((2, 2), (2, 1)),
        lambda: x.new_empty_strided((2,), (1,)),
        lambda: torch.empty_permuted((2, 3), (1, 0)),
    ]
    for make in factories:
        mode = Charged()
        with mode:
            make()
        assert len(mode.ran) == 1 and mode.ran[0] in UNINITIALIZED, mode.ran
    assert aten.zeros.default not in UNINITIALIZED and aten.ones_like.default not in UNINITIALIZED


# ---- speed ---------------------------------------------------------------------------------------


def test_charge_speed_on_memo_hits_and_misses() -> None:
    """µs per `charge`: pointwise ops take the arithmetic rule (no memo); mm and convolution
    hit the memo when their shapes repeat, and run on the meta device when they do not."""
    torch.set_num_threads(1)
    x, w = torch.randn(64, 784), torch.randn(784, 500)
    img, kernel = torch.randn(64, 1, 28, 28), torch.randn(32, 1, 3, 3)
    conv_args = (img, kernel, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    cases = {
        "add 64x784": (aten.add.Tensor, (x, x)),
        "mm 64x784 @ 784x500": (aten.mm.default, (x, w)),
        "conv2d 64x1x28x28 * 32x1x3x3": (aten.convolution.default, conv_args),
    }

    for name, (op, args) in cases.items():
        hit, missed = charge_micros(op, args)
        print(f"{name}: {hit:.1f} µs per charge on a hit, {missed:.1f} µs on a miss")
        if op is not aten.add.Tensor:
            assert 2 * hit < missed


def charge_micros(op: torch._ops.OpOverload, args: tuple) -> tuple[float, float]:
    """Median µs per `charge` of one op: with its cost memoized, and with the memo emptied."""
    estimates = Estimates()
    budget = Budget(MAX_ELEMENTS, 2**62, max_results=2**40, estimates=estimates)

    def miss() -> None:
        estimates._memo.clear()
        budget.charge(op, args, {})

    miss()
    return micros(lambda: budget.charge(op, args, {}), 500), micros(miss, 50)


def micros(call: Callable[[], None], n: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            call()
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds)
