"""DP-FedAvg (issue 25, part 2), in process: each worker clips its own move; with no noise a
Coordinator over VirtualWorkers equals plain PyTorch (clipped moves summed over the expected
count); the noise has the spread it claims; ε is Opacus's RDP accountant's; Poisson sampling;
adaptive clipping finds the quantile; a few rounds on the MNIST sample train; bad parameters
are clear errors."""

from __future__ import annotations

import copy
import json
import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F

import tether as sy
from tether import cli
from tether.cli import train as train_cli
from tether.cli.demo import mnist_tensors
from tether.federated import coordinator as coord
from tether.federated.coordinator import Coordinator
from tether.federated.delegated.training import TrainConfig, train
from tether.federated.models import mlp
from tether.federated.simulation import Simulation
from tether.federated.strategies import DPFedAvg, Update, make_strategy
from tether.federated.strategies.base import Sum
from tether.federated.strategies.dpfedavg import split_noise
from tether.privacy.dp.update_clip import move_norm

CLIP = 0.5


@pytest.fixture(scope="module")
def parts() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    data, targets = mnist_tensors(train=True)
    return {
        name: (data[i * 200 : (i + 1) * 200].contiguous(), targets[i * 200 : (i + 1) * 200])
        for i, name in enumerate(("alice", "bob", "charlie"))
    }


def plain_move(state, data, targets, seed: int) -> tuple[dict[str, torch.Tensor], bool]:
    """What one worker does in plain PyTorch: 3 SGD(lr=0.1) batches of 32 from `state`; its
    move, clipped to CLIP over all the entries, in float64, and whether it was within CLIP."""
    model = mlp()
    model.load_state_dict(state)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for index in order.split(32)[:3]:
        optimizer.zero_grad()
        F.nll_loss(model(data[index]), targets[index]).backward()
        optimizer.step()
    move = {k: v.double() - state[k].double() for k, v in model.state_dict().items()}
    norm = math.sqrt(sum(float(m.square().sum()) for m in move.values()))
    return {k: m * min(1.0, CLIP / norm) for k, m in move.items()}, norm <= CLIP


class Watched(DPFedAvg):
    """DP-FedAvg that keeps what each worker uploaded, and how far it moved."""

    def __init__(self, **arguments) -> None:
        super().__init__(**arguments)
        self.norms: list[float] = []
        self.within: list[bool | None] = []

    def aggregate(self, round, updates, global_state):
        self.norms += [move_norm(u.state, global_state) for u in updates]
        self.within += [u.within_clip for u in updates]
        return super().aggregate(round, updates, global_state)


def test_without_noise_the_coordinator_equals_plain_pytorch_over_the_expected_count(parts) -> None:
    """Two rounds over VirtualWorkers: every worker clipped its upload to C itself, and the
    global model is the plain-PyTorch sum of clipped moves over q*N = 3; the round's record and
    log carry ε (infinite: no noise)."""
    torch.manual_seed(0)
    model = mlp()
    start = copy.deepcopy(model.state_dict())
    workers = {}
    for name, part in parts.items():
        workers[name] = sy.VirtualWorker(id=f"dpfedavg-{name}")
        workers[name].publish("mnist", part)
    strategy = Watched(clip_norm=CLIP, noise_multiplier=0.0)
    lines: list[str] = []
    config = TrainConfig(max_batches=3, seed=5)
    result = Coordinator(
        model, workers, config=config, rounds=2, strategy=strategy, log=lines.append
    ).run()
    assert len(strategy.norms) == 6 and max(strategy.norms) <= CLIP * (1 + 1e-6)
    state, within = start, []
    for r in (1, 2):
        moves = []
        for i, part in enumerate(parts.values()):
            move, bit = plain_move(state, *part, seed=coord.round_seed(5, r, i))
            moves.append(move)
            within.append(bit)
        state = {k: (v.double() + sum(m[k] for m in moves) / 3).float() for k, v in state.items()}
    for key, value in state.items():
        torch.testing.assert_close(result.state[key], value, atol=1e-5, rtol=1e-4)
    assert strategy.within == within and False in within  # some had to clip
    assert [record["epsilon"] for record in result.history] == [math.inf, math.inf]
    assert "Round 2: DP-FedAvg has spent ε = inf in total (δ = 1e-05" in "\n".join(lines)


def test_a_worker_clips_its_own_move_and_says_whether_it_had_to(parts) -> None:
    data, targets = parts["alice"]
    torch.manual_seed(0)
    begun = copy.deepcopy(mlp().state_dict())
    free = mlp()
    free.load_state_dict(begun)
    train(free, data, targets, TrainConfig(max_batches=3))
    free_move = {k: free.state_dict()[k] - v for k, v in begun.items()}
    norm = move_norm(free.state_dict(), begun)
    for clip, within in ((norm / 3, False), (norm * 3, True)):
        model = mlp()
        model.load_state_dict(begun)
        result = train(model, data, targets, TrainConfig(max_batches=3, update_clip=clip))
        assert result["within_clip"] is within
        assert move_norm(model.state_dict(), begun) == pytest.approx(min(norm, clip), rel=1e-5)
        for key, value in model.state_dict().items():  # the same direction, scaled
            torch.testing.assert_close(
                value - begun[key], free_move[key] * min(1.0, clip / norm), atol=1e-6, rtol=1e-4
            )


def test_the_coordinator_clips_a_move_the_worker_did_not() -> None:
    """A client that skipped its clipping moves the model by C / (q N) at most, in its own
    direction; an honest one is left as it is."""
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=0.0, fraction=0.5)
    strategy.sample(1, ["a", "b", "c", "d"], random.Random(0))  # q N = 2
    start = {"w": torch.zeros(4), "count": torch.tensor(3)}
    far = Update("a", {"w": torch.tensor([30.0, 40.0, 0.0, 0.0]), "count": torch.tensor(9)}, 1)
    near = Update("b", {"w": torch.tensor([0.0, 0.0, 0.6, 0.0]), "count": torch.tensor(9)}, 1)
    moved = strategy.aggregate(1, [far, near], start)
    torch.testing.assert_close(moved["w"], torch.tensor([0.6, 0.8, 0.6, 0.0]) / 2)
    assert moved["count"] == 3


def test_the_noise_has_the_spread_it_claims() -> None:
    """Zero moves summed: the global model moves by N(0, (z C)^2) / (q N) per entry. Over
    200,000 draws the sample std is within 1% of it (its own std is 0.16%) and the mean
    within 5 standard errors of 0; two rounds draw afresh. With adaptive clipping the moves
    get the split noise z_Δ."""
    shape = (200_000,)
    state = {"w": torch.zeros(shape), "count": torch.tensor(7)}
    for arguments, z in (
        ({"noise_multiplier": 1.5}, 1.5),
        ({"noise_multiplier": 1.0, "target_quantile": 0.5, "quantile_noise": 1.0}, 2 / 3**0.5),
    ):
        strategy = DPFedAvg(clip_norm=2.0, fraction=0.25, **arguments)
        strategy.sample(1, [f"c{i}" for i in range(40)], random.Random(0))  # q N = 10
        zero = Sum(
            {"w": torch.zeros(shape, dtype=torch.float64), "count": torch.zeros(())}, 0, 0, 0
        )
        assert z == pytest.approx(split_noise(1.0, 1.0) if "quantile_noise" in arguments else 1.5)
        draws = []
        for r in (1, 2):
            expected = z * strategy.clip / 10  # an adaptive C moves after each round
            moved = strategy.aggregate_sum(r, zero, state)
            draws.append(moved["w"])
            std = float(moved["w"].double().std())
            assert std == pytest.approx(expected, rel=0.01)
            assert abs(float(moved["w"].double().mean())) < 5 * expected / shape[0] ** 0.5
            assert moved["count"] == 7  # integer entries are not released with noise
        assert not torch.equal(*draws)


@pytest.mark.parametrize(
    ("q", "z", "rounds", "delta"),
    [(0.1, 1.0, 40, 1e-5), (0.01, 1.1, 1000, 1e-6), (1.0, 5.0, 3, 1e-5)],
)
def test_epsilon_is_opacus_rdp_for_one_step_per_round(q, z, rounds, delta) -> None:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=z, sample_rate=q)
    strategy = DPFedAvg(noise_multiplier=z, fraction=q, delta=delta)
    strategy.sample(1, ["a", "b"], random.Random(0))
    state = {"w": torch.zeros(3)}
    strategy.aggregate_sum(rounds, Sum({"w": torch.zeros(3, dtype=torch.float64)}, 0, 0), state)
    assert strategy.epsilon() == pytest.approx(accountant.get_epsilon(delta), rel=1e-6)
    assert strategy.record()["epsilon"] == strategy.epsilon()
    assert strategy.epsilon(1e-3) < strategy.epsilon()


def test_clients_are_poisson_sampled_at_rate_q() -> None:
    strategy = DPFedAvg(fraction=0.3)
    clients = [f"c{i}" for i in range(100)]
    rng = random.Random(1)
    counts = [len(strategy.sample(r, clients, rng)) for r in range(1, 401)]
    assert statistics.mean(counts) == pytest.approx(30, abs=1.0)  # its std error is 0.23
    assert statistics.stdev(counts) == pytest.approx(math.sqrt(100 * 0.3 * 0.7), rel=0.15)
    assert min(counts) < 25 < 35 < max(counts)
    assert DPFedAvg(fraction=0.001).sample(1, ["a", "b"], random.Random(0)) == []


def test_a_round_that_samples_no_worker_still_releases_noise(parts) -> None:
    """The coordinator goes on when Poisson sampling picks no one; the model moves by noise."""
    torch.manual_seed(0)
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    workers = {name: sy.VirtualWorker(id=f"none-{name}") for name in parts}
    strategy = DPFedAvg(fraction=1e-9, noise_multiplier=1.0, clip_norm=1.0)
    result = Coordinator(model, workers, rounds=2, strategy=strategy, log=lambda _: None).run()
    assert [record["workers"] for record in result.history] == [[], []]
    assert not torch.equal(result.state["1.weight"], before["1.weight"])
    assert result.history[-1]["epsilon"] == pytest.approx(strategy.epsilon())


def test_adaptive_clipping_moves_c_to_the_target_quantile() -> None:
    """100 clients whose moves have norms 1, 2, ..., 100, each saying whether it was within
    C: from C = 1 and from C = 1000, C settles near the median (and near the 90th percentile
    for gamma = 0.9), with the count noised as the paper suggests (sigma_b = q N / 20)."""
    norms = torch.arange(1, 101, dtype=torch.float64)
    state = {"w": torch.zeros(1)}
    move = Sum({"w": torch.zeros(1, dtype=torch.float64)}, 100, 100)
    for quantile, start in ((0.5, 1.0), (0.5, 1000.0), (0.9, 1.0)):
        strategy = DPFedAvg(
            clip_norm=start, noise_multiplier=1.0, target_quantile=quantile, quantile_noise=5.0
        )
        strategy.sample(1, [f"c{i}" for i in range(100)], random.Random(0))
        history = []
        for r in range(1, 301):
            within = float((norms <= strategy.clip).sum())
            strategy.aggregate_sum(r, Sum(move.delta, 100, 100, within), state)
            history.append(strategy.clip)
        settled = statistics.mean(history[-100:])
        assert settled == pytest.approx(100 * quantile, rel=0.15), (quantile, start, settled)


def test_the_clients_bits_reach_adaptive_clipping_in_a_simulation(parts) -> None:
    """Every client's move is within C = 1000, says so, and C falls by exp(-clip_lr / 2) per
    round (b = 1, gamma = 0.5; no noise on the count)."""
    data, targets = parts["alice"]
    strategy = DPFedAvg(
        clip_norm=1000.0, noise_multiplier=0.0, target_quantile=0.5, quantile_noise=0.0
    )
    torch.manual_seed(0)
    Simulation(
        mlp(),
        (data, targets),
        partition="iid:4",
        strategy=strategy,
        config={"max_batches": 1},
        rounds=3,
    ).run()
    assert strategy.clip == pytest.approx(1000.0 * math.exp(-3 * 0.2 * 0.5), rel=1e-12)


def test_a_few_rounds_on_the_mnist_sample_train(capsys, tmp_path) -> None:
    """`tether simulate --strategy dpfedavg`: 20 clients of 50 images, q = 0.5, small noise;
    the accuracy goes up from round 1 to round 3 and ε is printed and recorded."""
    flags = f"--clients 20 --rounds 3 --eval-every 2 --batch-size 10 --no-progress --out {tmp_path}"
    strategy = "--strategy dpfedavg --fraction 0.5 --clip-norm 1 --noise-multiplier 0.01"
    assert cli.main(["simulate", *flags.split(), *strategy.split()]) == 0
    history = json.loads((tmp_path / "metrics.json").read_text())["rounds"]
    first, last = history[0]["accuracy"], history[-1]["accuracy"]
    assert last > max(0.75, first + 0.05), (first, last)
    assert history[-1]["epsilon"] > history[0]["epsilon"] > 0
    out = capsys.readouterr().out
    assert f"DP-FedAvg ε = {history[-1]['epsilon']:.4g} (δ = 1e-05)" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"clip_norm": 0}, "clip_norm must be a positive number, got 0"),
        ({"noise_multiplier": -1}, "noise_multiplier must be >= 0, got -1"),
        ({"delta": 1.0}, "delta must be in (0, 1), got 1.0"),
        ({"min_clients": 2}, "min_clients does not apply"),
        ({"clip_lr": 0.1}, "give target_quantile too"),
        ({"target_quantile": 1.5, "quantile_noise": 1.0}, "target_quantile must be in (0, 1)"),
        ({"target_quantile": 0.5}, "adaptive clipping needs quantile_noise"),
        (
            {"target_quantile": 0.5, "quantile_noise": 0.4, "noise_multiplier": 1.0},
            "quantile_noise must be more than noise_multiplier / 2 = 0.5",
        ),
    ],
)
def test_bad_parameters_are_clear_errors(arguments, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_strategy("dpfedavg", arguments)


def test_misuse_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="update_clip must be a positive number or None"):
        TrainConfig.parse({"update_clip": -1.0})
    state = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="let it sample the round's clients"):
        DPFedAvg().aggregate(1, [Update("a", state, 1)], state)
    adaptive = DPFedAvg(target_quantile=0.5, quantile_noise=1.0)
    adaptive.sample(1, ["a"], random.Random(0))
    with pytest.raises(ValueError, match="the clients did not report it"):
        adaptive.aggregate(1, [Update("a", state, 1)], state)


def test_tether_train_takes_the_flags_and_refuses_them_for_another_strategy(tmp_path) -> None:
    argv = ["train", "--worker", "a=ws://127.0.0.1:1", "--strategy", "dpfedavg"]
    argv += ["--clip-norm", "0.7", "--noise-multiplier", "1.2", "--fraction", "0.5"]
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    chosen = train_cli.strategy(train_cli._settings(args))
    assert isinstance(chosen, DPFedAvg)
    assert (chosen.clip, chosen.noise, chosen.fraction) == (0.7, 1.2, 0.5)
    toml = tmp_path / "federation.toml"
    toml.write_text(
        '[workers]\na = "ws://127.0.0.1:1"\n[strategy]\nname = "dpfedavg"\nclip_norm = 2\n'
        "target_quantile = 0.5\nquantile_noise = 3.0\n"
    )
    in_file = parser.parse_args(["train", "--federation", str(toml)])
    from_file = train_cli.strategy(train_cli._settings(in_file))
    assert isinstance(from_file, DPFedAvg) and from_file.target_quantile == 0.5
    wrong = parser.parse_args(["train", "--worker", "a=ws://127.0.0.1:1", "--clip-norm", "1"])
    with pytest.raises(ValueError, match="--clip-norm: not a parameter of --strategy fedavg"):
        train_cli._settings(wrong)
