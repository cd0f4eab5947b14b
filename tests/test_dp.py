"""DP-SGD inside delegated `fit` (issue 25, part 1), in process: the accountant is Opacus's RDP
and agrees with dp-accounting's; the ledger composes charges and keeps them on disk; the fast
per-sample clipping equals the reference and Opacus's per-sample gradients; the noise has the
spread it claims; batches are Poisson-sampled from entropy no config controls; the owner's
floor and budget hold, and a client cannot pass rules of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tether as sy
from tether.errors import NotAllowedError, RemoteError
from tether.federated import FIT
from tether.federated.delegated import enforce_dp, modelspec
from tether.federated.delegated.remote import remote_fit
from tether.federated.delegated.training import TrainConfig, evaluate, fit
from tether.federated.models import Net
from tether.privacy.attacks.models import mlp
from tether.privacy.dp import BudgetError, Ledger, OwnerDP, Steps, epsilon, ghost, per_sample
from tether.privacy.dp.sgd import PrivateRun, start
from tether.remote.client import ref

# Opacus's default RDP orders, for dp-accounting to use the same ones.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dp_accounting_epsilon(history: list[Steps], delta: float) -> float:
    """The same composition by another library's implementation (Google's dp-accounting)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(ORDERS)
    for s in history:
        event = dp_accounting.PoissonSampledDpEvent(s.rate, dp_accounting.GaussianDpEvent(s.noise))
        accountant.compose(event, s.count)
    return accountant.get_epsilon(delta)


# ---- the accountant and the ledger ----------------------------------------------------------


def test_the_abadi_setting_costs_what_opacus_rdp_says() -> None:
    from opacus.accountants import RDPAccountant

    got = epsilon([Steps(noise=4.0, rate=0.01, count=10_000)], 1e-5)
    assert got == pytest.approx(1.0355, abs=1e-4)
    accountant = RDPAccountant()
    for _ in range(3):
        accountant.step(noise_multiplier=4.0, sample_rate=0.01)
    assert epsilon([Steps(4.0, 0.01, 3)], 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))


@pytest.mark.parametrize(
    ("rate", "noise", "count", "delta"),
    [
        (0.01, 4.0, 10_000, 1e-5),
        (0.0256, 1.1, 400, 1e-5),
        (1.0, 1.0, 1, 1e-5),
        (0.1, 0.8, 50, 1e-6),
    ],
)
def test_epsilon_is_opacus_rdp_and_agrees_with_dp_accounting(rate, noise, count, delta) -> None:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise, rate, count)]
    steps = [Steps(noise, rate, count)]
    assert epsilon(steps, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    assert epsilon(steps, delta) == pytest.approx(dp_accounting_epsilon(steps, delta), rel=0.01)


def test_the_ledger_composes_charges_and_keeps_them_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    charges = [Steps(1.1, 0.02, 10), Steps(1.5, 0.02, 5), Steps(1.1, 0.02, 10)]
    for steps in charges:
        ledger.charge("data", steps, 1e-5, limit=100)
    whole = [Steps(1.1, 0.02, 20), Steps(1.5, 0.02, 5)]
    assert ledger.history("data") == whole
    assert ledger.spent("data", 1e-5) == pytest.approx(dp_accounting_epsilon(whole, 1e-5), rel=0.01)
    reopened = Ledger(path)  # a restart
    assert reopened.history("data") == whole and reopened.history("other") == []
    assert json.loads(path.read_text())["version"] == 2
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left beside it


def test_a_charge_over_the_budget_is_refused_and_not_recorded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    first = ledger.charge("data", Steps(1.0, 0.1, 100), 1e-5, limit=10.0)
    with pytest.raises(BudgetError, match=r"allows ε ≤ 10 .*ε = [\d.]+ is spent") as refused:
        ledger.charge("data", Steps(1.0, 0.1, 200), 1e-5, limit=10.0)
    assert f"{first.total:.4g}" in str(refused.value)
    assert Ledger(tmp_path / "ledger.json").history("data") == [Steps(1.0, 0.1, 100)]


def test_a_ledger_that_cannot_be_read_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable privacy ledger"):
        Ledger(path)
    assert path.read_text() == "{not json"


# ---- per-sample clipping ----------------------------------------------------------------------


def batch(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def opacus_clipped_sum(model: nn.Module, x, y, clip: float) -> list[torch.Tensor]:
    """Opacus's per-sample gradients (hook mode), clipped and summed as DP-SGD does."""
    from opacus import GradSampleModule

    wrapped = GradSampleModule(model)
    F.nll_loss(wrapped(x), y, reduction="sum").backward()
    params = [p for p in model.parameters()]
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in params], 1).norm(dim=1)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    sums = [torch.einsum("b,b...->...", factors, p.grad_sample) for p in params]
    wrapped._close()
    return sums


def test_ghost_clipping_equals_the_per_sample_reference_and_opacus() -> None:
    torch.manual_seed(0)
    model = mlp()
    x, y = batch()
    named = list(model.named_parameters())
    _, reference = per_sample.clipped_sum(model, F.nll_loss, x, y, 1.0, named)
    layers = ghost.linear_layers(model, named)
    assert len(layers) == 2
    fast = ghost.clipped_sum(model, F.nll_loss, x, y, 1.0, named, layers)
    assert fast is not None
    opacus = opacus_clipped_sum(model, x, y, 1.0)
    norms = per_sample.clipped_sum(model, F.nll_loss, x, y, 1e9, named)[1]
    assert norms[0].norm() > 1.0  # so the clipping did something
    for a, b, c in zip(fast[1], reference, opacus, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
        torch.testing.assert_close(a, c, atol=2e-6, rtol=1e-4)


def test_a_cnn_takes_the_per_sample_path_and_matches_a_loop_over_samples() -> None:
    torch.manual_seed(0)
    model = Net()
    x, y = batch(6)
    named = list(model.named_parameters())
    assert ghost.linear_layers(model, named) == []  # convolutions: the reference path
    _, sums = per_sample.clipped_sum(model, F.nll_loss, x, y, 0.5, named)
    expected = [torch.zeros_like(p) for _, p in named]
    for i in range(len(x)):  # the definition: one sample at a time
        model.zero_grad()
        F.nll_loss(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        grads = [p.grad for _, p in named]
        factor = min(1.0, 0.5 / (float(torch.stack([g.norm() for g in grads]).norm()) + 1e-6))
        for e, g in zip(expected, grads, strict=True):
            e.add_(g, alpha=factor)
    for a, b in zip(sums, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


# ---- the DP-SGD run -------------------------------------------------------------------------


def test_the_noise_has_the_spread_it_claims() -> None:
    """With the gradients clipped to almost nothing, one step's update is the noise alone:
    standard deviation lr * noise * clip / batch_size in every weight."""
    torch.manual_seed(0)
    spec = modelspec.describe(mlp())
    x, y = batch(40)
    config = {"batch_size": 4, "max_batches": 1, "optimizer_args": {"lr": 1.0}}
    result = fit(spec, x, y, {**config, "dp": {"noise": 2.0, "clip": 0.5}})
    update = torch.cat([(spec["state"][k] - w).flatten() for k, w in result["weights"].items()])
    assert float(update.std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.02)
    assert abs(float(update.mean())) < 0.002
    assert result["losses"] == [] and result["epoch_losses"] == []  # they stay on the worker


def test_batches_are_poisson_sampled_from_entropy_no_config_controls() -> None:
    x, y = batch(1000)
    index = torch.arange(1000)
    charge = OwnerDP(1.0, 1.0, 10).charge(x, y, Steps(1.0, 0.01, 1))

    def sizes_and_members() -> tuple[list[int], list[int]]:
        run = PrivateRun(OwnerDP(1.0, 1.0, 10).floor, 1000, 10, 300, charge)
        drawn = list(run.batches(index, index))
        return [len(b) for b, _ in drawn], drawn[0][0].tolist()

    sizes, first = sizes_and_members()
    mean = sum(sizes) / len(sizes)
    spread = (sum((s - mean) ** 2 for s in sizes) / len(sizes)) ** 0.5
    assert 9 < mean < 11 and 2.3 < spread < 3.9  # Binomial(1000, 0.01): mean 10, sd 3.1
    assert sizes_and_members()[1] != first  # a second run, same everything: other samples


def test_the_owner_decides_the_floor_and_a_job_may_only_ask_for_more() -> None:
    torch.manual_seed(0)
    spec = modelspec.describe(mlp())
    x, y = batch(64)
    owner = OwnerDP(noise=1.1, clip=1.0, max_epsilon=50)
    config = {"batch_size": 16, "max_batches": 2}
    plain = fit(spec, x, y, config, privacy=owner)["privacy"]
    assert (plain["noise"], plain["clip"], plain["steps"], plain["sample_rate"]) == (
        1.1,
        1.0,
        2,
        0.25,
    )
    assert plain["epsilon"] == pytest.approx(epsilon([Steps(1.1, 0.25, 2)], 1e-5))
    more = fit(spec, x, y, {**config, "dp": {"noise": 2.0, "clip": 0.5}}, privacy=owner)
    assert more["privacy"]["noise"] == 2.0 and more["privacy"]["epsilon"] < plain["epsilon"]
    total = epsilon([Steps(1.1, 0.25, 2), Steps(2.0, 0.25, 2)], 1e-5)
    assert more["privacy"]["epsilon_total"] == pytest.approx(total)
    for less in ({"noise": 1.0, "clip": 1.0}, {"noise": 1.1, "clip": 2.0}):
        with pytest.raises(ValueError, match=r"requires DP noise >= 1.1 and clipping norm <= 1"):
            fit(spec, x, y, {**config, "dp": less}, privacy=owner)
    with pytest.raises(ValueError, match="exact evaluation metrics would go around it"):
        evaluate(spec, x, y, privacy=owner)
    with pytest.raises(ValueError, match="dp must be a mapping with the keys"):
        TrainConfig.parse({"dp": {"noise": 1.0}})


def test_batchnorm_is_refused_with_a_reason() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.BatchNorm1d(10), nn.LogSoftmax(1))
    x, y = batch(8)
    run = start(TrainConfig.parse({"batch_size": 4, "dp": {"noise": 1.0, "clip": 1.0}}), None, x, y)
    assert run is not None
    with pytest.raises(ValueError, match=r"BatchNorm1d mixes a batch.s samples"):
        run.backward(model, F.nll_loss, x, y, list(model.named_parameters()))


def test_a_client_cannot_pass_the_rules_the_node_passes() -> None:
    """Over the wire, a client's `privacy=None` (to train without DP) is refused by the node
    before fit runs; fit with the owner's rules works and reports them."""
    hook = sy.TorchHook(torch)
    worker = sy.VirtualWorker(hook, id="dp-owner")
    enforce_dp(worker.node, OwnerDP(noise=1.3, clip=1.0, max_epsilon=20))
    x, y = batch(32)
    data, targets = x.send(worker), y.send(worker)
    spec = modelspec.describe(mlp())
    client = worker.client
    sneaky = client.call(
        FIT, [spec, ref(data), ref(targets), {"max_batches": 1}], {"privacy": None}, kind="object"
    )
    with pytest.raises((NotAllowedError, RemoteError), match="set by this node's owner"):
        sneaky.get()
    answer = remote_fit(client, (data, targets), spec, TrainConfig.parse({"max_batches": 1}))
    assert answer["privacy"]["noise"] == 1.3


class Mixer(nn.Module):
    """A coordinator's model whose forward mixes a batch's samples: every output carries the
    batch's sum, so one sample's data reaches every other sample's gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x.flatten(1))
        return F.log_softmax(h + h.sum(0), dim=1)


def test_one_sample_moves_the_clipped_sum_by_at_most_the_clip_whatever_the_model() -> None:
    """DP's premise, checked on built specs: removing one sample changes the clipped sum by at
    most C. A model whose forward mixes samples takes the per-sample path (each sample run
    alone), where it holds; the fast path would break it (shown), so it is not taken."""
    torch.manual_seed(0)
    x, y = batch(16)

    def moved(model: nn.Module, clipped_sum) -> float:
        named = list(model.named_parameters())
        whole, without = clipped_sum(model, named, x, y), clipped_sum(model, named, x[1:], y[1:])
        return float(
            torch.cat([(a - b).flatten() for a, b in zip(whole, without, strict=True)]).norm()
        )

    def dispatched(model, named, x, y) -> list[torch.Tensor]:
        run = start(
            TrainConfig.parse({"batch_size": 4, "dp": {"noise": 1e-9, "clip": 1.0}}), None, x, y
        )
        assert run is not None
        run.backward(model, F.nll_loss, x, y, named)
        return [p.grad * run.batch_size for _, p in named]

    mixer = modelspec.build(modelspec.describe(Mixer()))
    assert ghost.linear_layers(mixer, list(mixer.named_parameters())) == []
    assert moved(mixer, dispatched) <= 1.0 + 1e-5

    def fast(model, named, x, y) -> list[torch.Tensor]:
        found = ghost.clipped_sum(model, F.nll_loss, x, y, 1.0, named, [model.fc])
        assert found is not None
        return found[1]

    assert moved(mixer, fast) > 1.05  # what taking the fast path here would release

    chain = modelspec.build(modelspec.describe(mlp()))
    assert len(ghost.linear_layers(chain, list(chain.named_parameters()))) == 2
    assert moved(chain, dispatched) <= 1.0 + 1e-5
