"""Secure aggregation (issue 26, part 1): Shamir sharing, the ring encoding, what the
coordinator sees (masked uploads uniform over the ring and independent of the update; only the
sum decodes, exact up to quantisation), dropouts (in process, and with real `tether worker`
processes: 10 workers, threshold 7, 3 killed after masking -> the survivors' sum, 4 killed ->
the round aborts, nothing unmasked), the strategies' `aggregate_sum`, and
`Coordinator(secure_aggregation=True)` against plaintext FedAvg."""

from __future__ import annotations

import copy
import random
import signal
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import WorkerProcess
from scipy import stats

import tether as sy
from tether.cli.demo import mnist_tensors
from tether.errors import ConnectionLostError, FederationError, RemoteError
from tether.federated.coordinator import Coordinator
from tether.federated.delegated import SHARE_KEYS
from tether.federated.delegated.remote import remote_step
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import mlp
from tether.federated.secure import SecureAggregation
from tether.federated.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedYogi,
    Krum,
    Scaffold,
    Strategy,
    TrimmedMean,
    Update,
    make_strategy,
)
from tether.federated.strategies.base import summed
from tether.federated.strategies.fednova import FedNova
from tether.privacy.secagg import Aggregation, Encoding, MaskingClient, RoundAborted, Setup, shamir

# ---- Shamir --------------------------------------------------------------------------------


def test_any_threshold_of_the_shares_gives_the_secret_back() -> None:
    rng = random.Random(0)
    secret = bytes(rng.randrange(256) for _ in range(32))
    shares = shamir.split(secret, 4, 7)
    assert len(shares) == 7 and all(len(s) == shamir.SHARE_BYTES for s in shares)
    for _ in range(10):
        xs = rng.sample(range(1, 8), rng.randint(4, 7))
        assert shamir.combine({x: shares[x - 1] for x in xs}, 4) == secret
    with pytest.raises(ValueError, match="need 4 shares"):
        shamir.combine({x: shares[x - 1] for x in (1, 2, 3)}, 4)
    altered = {x: shares[x - 1] for x in (1, 2, 3, 4)}
    altered[2] = rng.randrange(shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ValueError, match="do not come from one secret"):
        shamir.combine(altered, 4)


def test_fewer_than_threshold_shares_fit_every_secret_equally() -> None:
    """t - 1 shares and any candidate secret lie on exactly one polynomial of degree t - 1:
    completing them with the candidate gives shares that reconstruct the candidate."""
    shares = shamir.split(bytes(32), 3, 5)
    known = {1: shares[0], 2: shares[1]}
    for candidate in (bytes(32), b"\xff" * 32, bytes(range(32))):
        xs = (0, 1, 2)  # the candidate is the value at 0
        points = {
            0: int.from_bytes(candidate, "big"),
            **{x: shamir.element(s) for x, s in known.items()},
        }
        # the polynomial through the three points, evaluated at x = 3
        weights = _lagrange_at(xs, 3)
        third = sum(w * points[x] for x, w in zip(xs, weights, strict=True)) % shamir.PRIME
        completed = {**known, 3: third.to_bytes(shamir.SHARE_BYTES, "big")}
        assert shamir.combine(completed, 3) == candidate


def _lagrange_at(xs: tuple[int, ...], at: int) -> list[int]:
    p = shamir.PRIME
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num, den = num * (at - xj) % p, den * (xi - xj) % p
        out.append(num * pow(den, -1, p) % p)
    return out


# ---- the ring encoding ------------------------------------------------------------------------

GLOBAL = {
    "w": torch.zeros(3, 4),
    "b": torch.full((4,), 0.5),
    "count": torch.tensor(7),  # an integer entry (BatchNorm's counter)
}


def _trained(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": 0.5 + torch.randn(4, generator=g),
        "count": torch.tensor(7 + seed),
    }


def test_the_sum_of_encodings_decodes_to_the_weighted_sum_within_the_stated_error() -> None:
    encoding = Encoding(clients=5, max_weight=100.0)
    weights = [10, 20, 30, 40, 250]  # the last is over the bound: it counts as 100
    trained = [_trained(i) for i in range(5)]
    total = sum(
        (encoding.encode(t, GLOBAL, w) for t, w in zip(trained, weights, strict=True)),
        np.zeros(encoding.length(GLOBAL), np.uint32),
    )
    moves, weight = encoding.decode(total, GLOBAL)
    counted = [min(w, 100) for w in weights]
    assert weight == pytest.approx(sum(counted), abs=5 * encoding.error(1.0) * 100)
    for key, base in GLOBAL.items():
        expected = sum(
            w * (t[key].double() - base.double()).clamp(-8, 8)
            for t, w in zip(trained, counted, strict=True)
        )
        # each worker's coordinate within error(range), in units of r = w / max_weight
        bound = 5 * encoding.error(encoding.range_of(base)) * 100
        assert (moves[key] - expected).abs().max() <= bound, key
    assert encoding.error(8.0) <= 8.0 * 5 * 2**-32 * 1.01  # range * clients * 2^-32


def test_an_update_outside_the_range_is_clipped_to_it() -> None:
    encoding = Encoding(clients=2, max_weight=1.0, clip=0.5)
    far = {"w": torch.full((3, 4), 3.0), "b": torch.full((4,), -9.0), "count": torch.tensor(7)}
    moves, _ = encoding.decode(encoding.encode(far, GLOBAL, 1), GLOBAL)
    assert torch.allclose(moves["w"], torch.full((3, 4), 0.5, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(moves["b"], torch.full((4,), -0.5, dtype=torch.float64), atol=1e-8)
    nan = {**far, "w": torch.full((3, 4), float("nan"))}
    with pytest.raises(ValueError, match="not finite"):
        encoding.encode(nan, GLOBAL, 1)


# ---- the protocol, in process -----------------------------------------------------------------


def _round(n: int, t: int, length: int = 2001, seed: int = 0):
    """Workers with random updates in the ring, keys advertised and the roster built."""
    encoding = Encoding(clients=n, max_weight=1.0)
    setup = Setup.fresh(t, encoding)
    rng = np.random.default_rng(seed)
    vectors = {f"w{i:02d}": rng.integers(0, 2**32, length, dtype=np.uint32) for i in range(n)}
    clients = {name: MaskingClient(name, setup, v.copy()) for name, v in vectors.items()}
    aggregation = Aggregation(setup, length)
    roster = aggregation.roster({name: c.keys() for name, c in clients.items()})
    return vectors, clients, aggregation, roster


def _share(clients, aggregation, roster, alive=None):
    alive = list(clients) if alive is None else alive
    return aggregation.route({name: clients[name].share_keys(roster) for name in alive})


def _ring_sum(vectors, names) -> np.ndarray:
    return sum((vectors[n] for n in names), np.zeros_like(next(iter(vectors.values()))))


@pytest.mark.parametrize("drop_shared, drop_unmask", [(0, 0), (3, 0), (0, 3), (2, 1)])
def test_dropouts_up_to_the_threshold_leave_the_survivors_exact_sum(drop_shared, drop_unmask):
    """10 workers, threshold 7: those that drop after sharing keys (their pairwise masks are
    in the others' inputs) are unmasked from shares; those that drop after sending their
    masked input (during the unmasking) stay in the sum."""
    vectors, clients, aggregation, roster = _round(10, 7)
    mail = _share(clients, aggregation, roster)
    names = sorted(clients)
    masked_names = names[drop_shared:]
    for name in masked_names:
        aggregation.add(name, clients[name].masked_input(mail[name]))
    survivors = aggregation.collected()
    assert survivors == masked_names
    answers = {n: clients[n].unmask(survivors) for n in survivors[drop_unmask:]}
    total = aggregation.unmask(answers)
    assert np.array_equal(total, _ring_sum(vectors, survivors))


def test_four_dropouts_of_ten_abort_the_round_and_the_workers_give_no_shares() -> None:
    _vectors, clients, aggregation, roster = _round(10, 7)
    mail = _share(clients, aggregation, roster)
    alive = sorted(clients)[4:]
    for name in alive:
        aggregation.add(name, clients[name].masked_input(mail[name]))
    with pytest.raises(
        RoundAborted, match="6 workers sent masked inputs, fewer than the threshold 7"
    ):
        aggregation.collected()
    # a coordinator that asked anyway gets no share from any worker
    for name in alive:
        with pytest.raises(RoundAborted, match="no shares are given"):
            clients[name].unmask(alive)


def test_a_worker_answers_each_step_once_and_checks_what_it_is_sent() -> None:
    vectors, clients, aggregation, roster = _round(4, 3)
    alice = clients["w00"]
    with pytest.raises(ValueError, match="does not hold 'w00'"):
        alice.share_keys({k: v for k, v in roster.items() if k != "w00"})
    fresh = MaskingClient("w00", aggregation.setup, vectors["w00"])
    with pytest.raises(ValueError, match="distinct 32-byte keys"):
        fresh.share_keys({**roster, "w01": {"cipher": b"short", "mask": b"x" * 32}})
    with pytest.raises(ValueError, match="cannot follow 'failed'"):  # its part has ended
        alice.share_keys(roster)
    mail = _share(clients, aggregation, roster, alive=["w01", "w02", "w03"])
    with pytest.raises(ValueError, match="'unmasked' cannot follow 'shared'"):
        clients["w01"].unmask(["w01", "w02", "w03"])
    for name in ("w01", "w02", "w03"):
        aggregation.add(name, clients[name].masked_input(mail[name]))
    with pytest.raises(ValueError, match="sent its input twice"):
        aggregation.add("w01", vectors["w01"])
    survivors = aggregation.collected()
    clients["w01"].unmask(survivors)
    with pytest.raises(ValueError, match="cannot follow 'unmasked'"):
        clients["w01"].unmask(survivors[:2])  # a second set of survivors: never both shares
    with pytest.raises(ValueError, match="survivors must be workers that shared"):
        clients["w02"].unmask(["w00", "w02", "w03"])
    assert "w01" in repr(clients["w01"]) and "unmasked" in repr(clients["w01"])


def _masked_uploads(update: np.ndarray, rounds: int) -> np.ndarray:
    """What the coordinator receives from worker w00 with this update, in `rounds` rounds."""
    out = []
    for r in range(rounds):
        _, clients, aggregation, roster = _round(3, 2, length=len(update), seed=r)
        clients["w00"]._vector = update.copy()  # this worker's update (the others random)
        mail = _share(clients, aggregation, roster)
        out.append(clients["w00"].masked_input(mail["w00"]))
    return np.concatenate(out)


def test_a_masked_upload_is_uniform_over_the_ring_and_independent_of_the_update() -> None:
    """Chi-square over 256 buckets (the top 8 bits) of 200,000 masked coordinates, for an
    all-zero update and for a maximal one; the two samples also pass a two-sample test
    against each other, and a masked coordinate does not correlate with the update's."""
    length, rounds = 50_000, 4
    zero = np.zeros(length, np.uint32)
    encoding = Encoding(clients=3, max_weight=1.0)
    ramp = np.linspace(-8, 8, length)
    big = encoding.encode({"x": torch.from_numpy(ramp)}, {"x": torch.zeros(length)}, 1)[:-1]
    buckets = {}
    for name, update in (("zero", zero), ("ramp", big)):
        uploads = _masked_uploads(update, rounds)
        counts = np.bincount(uploads >> 24, minlength=256)
        buckets[name] = counts
        p = stats.chisquare(counts).pvalue
        assert p > 1e-4, (name, p)
        assert len(np.unique(uploads)) > 0.99 * len(uploads)  # no structure left
    table = np.stack([buckets["zero"], buckets["ramp"]])
    assert stats.chi2_contingency(table).pvalue > 1e-4
    uploads = _masked_uploads(big, 1).astype(np.float64)
    r = np.corrcoef(ramp, uploads)[0, 1]
    assert abs(r) < 5 / np.sqrt(length), r


def test_only_the_sum_decodes() -> None:
    """One masked upload, or the sum of all but one, decodes to noise spread over the whole
    range; the sum of all decodes to the sum of the updates."""
    n, length = 5, 20_000
    encoding = Encoding(clients=n, max_weight=1.0)
    setup = Setup.fresh(3, encoding)
    state = {"x": torch.zeros(length - 1)}
    g = torch.Generator().manual_seed(3)
    updates = {f"w{i}": {"x": 0.01 * torch.randn(length - 1, generator=g)} for i in range(n)}
    clients = {k: MaskingClient(k, setup, encoding.encode(u, state, 1)) for k, u in updates.items()}
    aggregation = Aggregation(setup, length)
    roster = aggregation.roster({k: c.keys() for k, c in clients.items()})
    mail = _share(clients, aggregation, roster)
    uploads = {k: clients[k].masked_input(mail[k]) for k in clients}
    true_sum = sum(u["x"].double() for u in updates.values())
    one, _ = encoding.decode(uploads["w0"], state)
    partial, _ = encoding.decode(_ring_sum(uploads, list(uploads)[1:]), state)
    full, weight = encoding.decode(_ring_sum(uploads, list(uploads)), state)
    limit = 2**31 / encoding.scale(encoding.clip)  # the largest magnitude the ring holds
    for noise in (one["x"], partial["x"] - (true_sum - updates["w0"]["x"].double())):
        assert noise.abs().mean() > 0.4 * limit  # uniform over (-limit, limit): mean limit/2
    # (without unmasking, the sum of everything still carries the self masks)
    for name in uploads:
        aggregation.add(name, uploads[name])
    total = aggregation.unmask({k: clients[k].unmask(aggregation.collected()) for k in clients})
    decoded, weight = encoding.decode(total, state)
    assert (decoded["x"] - true_sum).abs().max() <= n * encoding.error(encoding.clip)
    assert weight == pytest.approx(n, abs=n * encoding.error(1.0))
    assert full["x"].abs().mean() > 0.4 * limit


# ---- strategies on the sum --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        FedAvg,
        lambda: FedProx(mu=0.01),
        FedAvgM,
        lambda: FedAdam(server_lr=0.1),
        lambda: FedAdagrad(server_lr=0.1),
        lambda: FedYogi(server_lr=0.1),
    ],
)
def test_each_sum_capable_strategy_steps_from_the_sum_as_from_the_updates(make) -> None:
    """`aggregate_sum(summed(updates))` equals `aggregate(updates)`, two rounds running (the
    server optimizers' state carries over)."""
    from_updates, from_sum = make(), make()
    state = dict(GLOBAL)
    for r in (1, 2):
        updates = [Update(f"c{i}", _trained(10 * r + i), 10 * (i + 1)) for i in range(3)]
        a = from_updates.aggregate(r, updates, state)
        total = summed(updates, state, from_sum.weigh_by_samples)
        b = from_sum.aggregate_sum(r, total, state)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
        state = a


@pytest.mark.parametrize("strategy", [FedMedian(), TrimmedMean(), Krum(), FedNova(), Scaffold()])
def test_a_strategy_that_needs_each_update_is_refused(strategy) -> None:
    with pytest.raises(ValueError, match=f"{strategy.name} needs each worker's update"):
        Coordinator(
            mlp(), {"a": sy.VirtualWorker(id="a")}, secure_aggregation=True, strategy=strategy
        )


# ---- through the coordinator ------------------------------------------------------------------


def _workers(sizes: list[int], release: str = "open") -> dict[str, sy.VirtualWorker]:
    data, targets = mnist_tensors(train=True)
    workers, start = {}, 0
    for i, size in enumerate(sizes):
        worker = sy.VirtualWorker(id=f"w{i}", release=release)
        worker.publish(
            "mnist", (data[start : start + size].clone(), targets[start : start + size].clone())
        )
        workers[f"w{i}"] = worker
        start += size
    return workers


def _plaintext_and_secure(sizes: list[int], strategy: Callable[[], Strategy]):
    """Two rounds over `training` workers of these sizes, once in plaintext and once with
    secure aggregation, from the same seed: ({secure: final state}, {secure: history})."""
    config = TrainConfig(batch_size=16, max_batches=4, seed=2)
    runs, histories = {}, {}
    for secure in (False, True):
        torch.manual_seed(0)
        result = Coordinator(
            mlp(),
            _workers(sizes, release="training"),
            config=config,
            rounds=2,
            log=lambda line: None,
            strategy=strategy(),
            secure_aggregation=secure,
        ).run()
        runs[secure], histories[secure] = result.state, result.history
    return runs, histories


def test_a_secure_run_equals_plaintext_fedavg_within_quantisation() -> None:
    """Two rounds of FedAvg over 4 workers of different sizes, on `training` nodes: the secure
    run's weights are the plaintext run's within the encoding's error (samples-weighted)."""
    sizes = [40, 64, 80, 100]
    runs, histories = _plaintext_and_secure(sizes, FedAvg)
    # per coordinate of the mean move: each worker off by error(clip) * max_weight / weight sum
    encoding = Encoding(clients=4, max_weight=64.0)
    bound = 4 * encoding.error(encoding.clip) * 64.0 / sum(min(s, 64) for s in sizes)
    for key, plain in runs[False].items():
        gap = (runs[True][key] - plain).abs().max().item()
        assert gap <= 2 * bound + 1e-6, (key, gap, bound)  # two rounds; float32 rounding
    assert bound < 1e-7
    secure_train = histories[True][0]["train"]
    assert set(secure_train) == {"w0", "w1", "w2", "w3"}
    assert all(set(m) == {"seconds"} for m in secure_train.values())  # no losses, no samples


def test_dp_fedavg_runs_on_the_secure_sum_as_on_the_updates() -> None:
    """DP-FedAvg composes with secure aggregation: each worker clips its own move before it is
    masked, so the coordinator adds its noise to the sum alone. Without noise and with every
    worker sampled, the secure run is the plaintext run within the encoding's error."""
    runs, histories = _plaintext_and_secure(
        [40, 64, 80, 100],
        lambda: make_strategy("dpfedavg", {"clip_norm": 0.05, "noise_multiplier": 0.0}),
    )
    torch.manual_seed(0)
    initial = mlp().state_dict()
    moved = max((runs[False][k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 0.001  # it trained (the clipped moves are small, not nothing)
    for key, plain in runs[False].items():
        assert (runs[True][key] - plain).abs().max().item() < 1e-6, key
    assert histories[True][-1]["clients"] == 4


def test_the_kept_update_never_leaves_a_training_worker() -> None:
    """The MaskingClient that holds a worker's update cannot be fetched, on a `training`
    node (the default of `tether worker`) nor an `open` one; its steps' answers can."""
    from tether.federated.delegated import modelspec
    from tether.federated.delegated.remote import dataset_pointers, remote_secure_fit

    for release in ("training", "open"):
        worker = _workers([32], release=release)["w0"]
        client = worker.client
        setup = Setup.fresh(2, Encoding(clients=2, max_weight=32.0))
        spec = modelspec.describe(mlp())
        kept, receipt = remote_secure_fit(
            client,
            dataset_pointers(client, "mnist"),
            spec,
            TrainConfig(max_batches=1),
            setup.to_dict(),
            "w0",
            True,
        )
        assert set(receipt) == {"keys", "seconds"}
        with pytest.raises(RemoteError, match="TypeError: a MaskingClient cannot leave the node"):
            kept.get()
        peer = MaskingClient(
            "peer", setup, np.zeros(setup.encoding.length(spec["state"]), np.uint32)
        )
        roster = {"peer": peer.keys(), "w0": receipt["keys"]}
        sealed = remote_step(client, SHARE_KEYS, kept, roster)
        assert set(sealed) == {"peer"} and isinstance(sealed["peer"], bytes)
        peer.share_keys(roster)
        with pytest.raises(RemoteError, match="'shared' cannot follow 'shared'"):
            remote_step(client, SHARE_KEYS, kept, roster)


def test_hostile_protocol_messages_get_clear_errors_and_the_worker_keeps_serving() -> None:
    from tether.federated.delegated import modelspec
    from tether.federated.delegated.remote import dataset_pointers, remote_secure_fit
    from tether.remote.client import ref

    worker = _workers([32], release="training")["w0"]
    client = worker.client
    dataset = dataset_pointers(client, "mnist")
    spec = modelspec.describe(mlp())
    setup = Setup.fresh(2, Encoding(clients=3, max_weight=32.0)).to_dict()

    def fit(setup: dict) -> tuple:
        return remote_secure_fit(
            client, dataset, spec, TrainConfig(max_batches=1), setup, "w0", True
        )

    for bad, why in [
        ({"round": b"x"}, "a mapping with keys"),
        ({**setup, "round": b"short"}, "a round id is 16 bytes"),
        ({**setup, "threshold": 1}, r"threshold must be an integer in \[2, 3\]"),
        ({**setup, "clients": 10**6}, "clients must be an integer in"),
        ({**setup, "clip": float("inf")}, "clip must be positive and finite"),
    ]:
        with pytest.raises(RemoteError, match=why):
            fit(bad)
    with pytest.raises(RemoteError, match="needs a MaskingClient as its first argument"):
        client.call(SHARE_KEYS, [ref(dataset[0]), {}], kind="object", flush=True).get()
    kept, receipt = fit(setup)
    with pytest.raises(RemoteError, match="roster must name between the threshold"):
        remote_step(client, SHARE_KEYS, kept, {"w0": receipt["keys"]})
    with pytest.raises(RemoteError, match="cannot follow 'failed'"):  # its part has ended
        remote_step(client, SHARE_KEYS, kept, {"w0": receipt["keys"]})
    kept, receipt = fit(setup)  # and the worker serves the next round
    assert set(receipt["keys"]) == {"cipher", "mask"}


# ---- real worker processes --------------------------------------------------------------------

N, THRESHOLD = 10, 7
CONFIG = {"batch_size": 16, "max_batches": 2, "seed": 3}


def _start(indices: list[int]) -> dict[int, WorkerProcess]:
    commands = [
        ("--id", f"w{i}", "--partition", f"iid:{N}", "--part", str(i), "--samples", str(40 + 4 * i))
        for i in indices
    ]
    return dict(zip(indices, WorkerProcess.many(commands), strict=True))


def _dead() -> None:
    raise ConnectionLostError("this worker was killed")


def _coordinator(processes, alive, secure, name, on_secure_step=None):
    torch.manual_seed(0)
    workers = {
        f"w{i}": (processes[i].connect(id=name) if i in alive else _dead) for i in sorted(processes)
    }
    return Coordinator(
        mlp(),
        workers,
        config=CONFIG,
        rounds=1,
        log=lambda line: None,
        secure_aggregation=SecureAggregation(threshold=THRESHOLD, step_timeout=5.0)
        if secure
        else False,
        on_secure_step=on_secure_step,
    )


def _at(step: str, act):
    """An `on_secure_step` hook that runs `act()` once the protocol has done `step`."""
    done: list[str] = []

    def hook(r: int, name: str) -> None:
        done.append(name)
        if name == step:
            act()

    hook.done = done  # type: ignore[attr-defined]
    return hook


def test_real_workers_four_gone_after_masking_abort_three_killed_leave_the_survivors_sum():
    """10 `tether worker` processes (release policy `training`), threshold 7.

    Four stop answering once they have shared their keys (frozen with SIGSTOP, so that the
    same ten processes serve the second part; to the coordinator a frozen worker is a dead
    one, found out by the step timeout of 5 s): the round aborts at the masked inputs, no worker is
    asked for shares, the model is unchanged.

    Then three are killed (SIGKILL) at the same moment (their pairwise masks are in the
    others' inputs): the round completes, and its model is plaintext FedAvg over the 7
    survivors (run on the same processes after it) within the encoding's error."""
    processes = _start(list(range(N)))
    everyone = set(range(N))
    try:
        frozen = [1, 2, 3, 5]
        freeze = _at(
            "shared", lambda: [processes[i].proc.send_signal(signal.SIGSTOP) for i in frozen]
        )
        aborting = _coordinator(processes, everyone, True, "first", freeze)
        before = copy.deepcopy(aborting.state)
        with pytest.raises(
            FederationError,
            match="secure aggregation aborted, nothing was unmasked: 6 workers sent masked "
            "inputs, fewer than the threshold 7",
        ):
            aborting.run()
        assert freeze.done == ["advertised", "shared"]  # no "masked": no shares were asked for
        assert not aborting.history
        assert all(torch.equal(aborting.state[k], v) for k, v in before.items())
        for i in frozen:
            processes[i].proc.send_signal(signal.SIGCONT)

        killed = [0, 4, 8]
        kill = _at("shared", lambda: [processes[i].stop(signal.SIGKILL) for i in killed])
        secure = _coordinator(processes, everyone, True, "second", kill)
        initial = copy.deepcopy(secure.state)
        result = secure.run()
        [record] = result.history
        survivors = [f"w{i}" for i in sorted(everyone - set(killed))]
        assert record["workers"] == survivors and record["clients"] == 7
        assert set(record["left_out"]) == {f"w{i}" for i in killed}
        plain = _coordinator(processes, everyone - set(killed), False, "plain").run()
        assert plain.history[0]["workers"] == survivors
        for key, value in plain.state.items():
            assert (result.state[key] - value).abs().max() < 1e-6, key
            assert (result.state[key] - initial[key]).abs().max() > 1e-3  # it did move
    finally:
        for process in processes.values():
            process.stop(signal.SIGKILL)


def test_tether_train_runs_secure_rounds_from_the_flag_or_the_federation_file(tmp_path, capsys):
    """`--secure-aggregation` (or `secure_aggregation = true` in the federation file) runs
    the rounds securely; with a strategy that needs each update it stops with the reason."""
    import argparse
    import json

    from tether.cli import train as train_cli
    from tether.federated.checkpoint import CHECKPOINT_JSON

    workers = _workers([48, 48, 64], release="training")
    federation = tmp_path / "federation.toml"
    federation.write_text(
        "secure_aggregation = true\nsecure_threshold = 3\nrounds = 1\n"
        'federate_after_n_batches = 2\nmodel = "mlp"\nprogress = false\n'
        "[workers]\n" + "".join(f'{name} = "ws://{name}"\n' for name in workers)
    )

    def connect(url: str, **options):
        return workers[url.removeprefix("ws://")]

    def main(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        train_cli.add_arguments(parser)
        args = parser.parse_args(
            ["--federation", str(federation), "--checkpoint", str(tmp_path / "c"), *argv]
        )
        return train_cli.main(args, connect)

    assert main() == 0
    [record] = json.loads((tmp_path / "c" / CHECKPOINT_JSON).read_text())["history"]
    assert record["clients"] == 3 and all(set(m) == {"seconds"} for m in record["train"].values())
    assert main("--strategy", "median") == 1
    assert "strategy median needs each worker's update" in capsys.readouterr().err
