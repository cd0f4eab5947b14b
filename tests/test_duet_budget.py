"""Duet: differentially private releases within a budget the owner grants.

Against a real owner process (tests/owner_process.py, a Duet node behind the websocket
server): a budget cannot be exceeded by splitting a query into many (Laplace: 1,000 queries of
ε = 0.001 fill ε = 1 exactly), hostile queries (bad bounds or noise, derived tensors whose
rows mix the data's rows, the node's own arguments) are refused while the node keeps serving,
and a spend kept in a ledger file refuses releases in a restarted owner. In process, through
the real websocket server: Gaussian releases compose as Opacus's RDP accountant says (checked
against Google's dp-accounting), the full Duet API (grant, publish, the scientist's budget,
the owner's tables and audit log); concurrent releases on one account; and the mechanisms'
noise measured against theory over many draws.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import LOGS, _die_with_parent, leaked, private_values
from owner_process import SECRET, TOKEN

import tether as sy
from tether import errors
from tether.duet import OwnerDuet, ScientistDuet
from tether.duet.budget import BUDGET, RELEASE
from tether.duet.names import HELLO
from tether.duet.node import DuetNode
from tether.privacy.dp import BudgetError, Budgets, Query, Steps, epsilon
from tether.privacy.dp.release import noisy, plan, release
from tether.transports.websocket import ServerThread, WebsocketTransport, WorkerServer
from tether.wire import Call, Done, Failure, Get, Ref, Value

SCRIPT = Path(__file__).with_name("owner_process.py")
CLIENT = "mallory"
PRIVATE = private_values(SECRET)
WIDE = (0.0, 2e6)  # bounds that hold every SECRET value


class Owner:
    """tests/owner_process.py (strict) in a child process, keeping its spend in `ledger`
    (None: in memory; a ledger file is synced at every charge, ~10 ms here)."""

    def __init__(self, ledger: Path | None = None) -> None:
        self.log = (LOGS / "owner-budget.log").open("a")
        kept = ["--dp-ledger", str(ledger)] if ledger is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--policy", "strict", *kept],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            preexec_fn=_die_with_parent,
        )
        watchdog = threading.Timer(60, self.proc.kill)
        watchdog.start()
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        watchdog.cancel()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]

    def ask(self, question: str) -> str:
        self.proc.stdin.write(question + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.proc.stdout.readline().split()[-1]  # type: ignore[union-attr]

    def join(self) -> sy.Worker:
        """The scientist: a client that said hello as CLIENT (the first one is confirmed)."""
        worker = sy.connect(self.url, token=TOKEN)
        assert worker.client.transport.exchange([Call(HELLO, [CLIENT, 5.0], {}, None)])() == [
            Done()
        ]
        return worker

    def stop(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.kill()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def owner() -> Iterator[Owner]:
    process = Owner()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def scientist(owner: Owner) -> Iterator[sy.Worker]:
    worker = owner.join()
    yield worker
    worker.close()


# ---- against a real owner process -------------------------------------------------------------


def test_splitting_a_query_into_many_cannot_exceed_the_budget(owner, scientist):
    assert owner.ask(f"grant {CLIENT} 1.0 1e-5 secret") == CLIENT
    x = scientist.published("secret")
    before = int(owner.ask("released"))
    sums = [x.publish("sum", bounds=WIDE, mechanism="laplace", epsilon=0.001) for _ in range(9)]
    query = {"aggregate": "sum", "bounds": list(WIDE), "mechanism": "laplace", "epsilon": 0.001}
    ids = iter(range(10_000, 12_000))
    for _ in range(9):  # 990 more, 110 to a frame, as a raw client pipelines them
        outs = [next(ids) for _ in range(110)]
        frame = [Call(RELEASE, [x.id, query], {}, out, refs=1) for out in outs]
        replies = scientist.client.transport.exchange([*frame, Get(outs)])()
        sums += list(replies[-1].value)
    with pytest.raises(errors.RemoteError, match=r"ε = 0.999 is spent \(0.001 remains\)"):
        x.publish("sum", bounds=WIDE, mechanism="laplace", epsilon=0.002)
    sums.append(x.publish("sum", bounds=WIDE, mechanism="laplace", epsilon=0.001))
    for _ in range(2):  # refused however small, once the budget is spent
        with pytest.raises(errors.RemoteError, match=r"BudgetError: .*ε = 1 is spent \(0 rem"):
            x.publish("count", bounds=WIDE, mechanism="laplace", epsilon=1e-6)
    assert float(owner.ask(f"spent {CLIENT} secret")) == pytest.approx(1.0)
    assert int(owner.ask("released")) - before == 1000
    assert all(s.shape == (4,) and s.dtype == torch.float64 for s in sums)
    # Each release is the column sums plus Laplace noise of scale 4 * 2e6 / 0.001 = 8e9.
    spread = torch.stack(sums).std(0)
    assert ((spread > 0.8 * 8e9 * math.sqrt(2)) & (spread < 1.2 * 8e9 * math.sqrt(2))).all()


def test_hostile_queries_are_refused_and_the_node_keeps_serving(owner, scientist):
    assert owner.ask(f"grant {CLIENT} 50.0 1e-5 secret") == CLIENT  # more; 1 is spent
    secret = scientist.published("secret")  # kept: a pointer's last reference frees it
    x = secret.id
    scientist.flush()
    transport = scientist.client.transport
    replies: list = []

    def exchange(commands: list) -> Callable[[], list]:
        answered = transport.exchange(commands)()
        replies.extend(answered)
        return lambda: answered

    ids = iter(range(50_000, 60_000))
    good = {"aggregate": "sum", "bounds": [0.0, 1.0], "mechanism": "laplace", "epsilon": 0.1}

    def release_of(arg: object, query: object, kwargs: dict | None = None, refs: int = 1):
        out = next(ids)
        [done, got] = exchange(
            [Call(RELEASE, [arg, query], kwargs or {}, out, refs=refs), Get([out])]
        )()
        return done, got

    bad_queries = [
        {**good, "bounds": [math.nan, 1.0]},
        {**good, "bounds": [0.0, math.inf]},
        {**good, "bounds": [1.0, 0.0]},
        {**good, "bounds": [1.0, 1.0]},
        {**good, "bounds": [0.0]},
        {**good, "epsilon": 0.0},
        {**good, "epsilon": -1.0},
        {**good, "epsilon": math.nan},
        {**good, "mechanism": "gaussian", "sigma": 0.0, "epsilon": None},
        {**{k: v for k, v in good.items() if k != "epsilon"}, "mechanism": "gaussian", "sigma": -1},
        {**good, "mechanism": "gaussian"},  # gaussian takes sigma, not epsilon
        {**good, "aggregate": "median"},
        {**good, "bins": True},
        {**good, "bins": 10**9},
        {**good, "sensitivity": 0.0},  # never taken from the scientist
        [1, 2],
        "sum",
    ]
    spent = float(owner.ask(f"spent {CLIENT} secret"))
    for query in bad_queries:
        done, got = release_of(x, query)
        assert isinstance(done, Failure) and done.kind in ("TypeError", "ValueError"), (query, done)
        assert isinstance(got, Failure)
    # The node's own arguments: the budget book and the caller.
    for kwargs in ({"budgets": {"x": 1}}, {"caller": CLIENT}):
        done, _ = release_of(x, good, kwargs)
        assert isinstance(done, Failure) and done.kind == "NotAllowedError", done
    # Derived tensors: magnitude (x * 1000), one row repeated, every row the column sums,
    # rows mixed by a matmul. None is published data itself: refused before anything runs.
    mine = next(ids)
    exchange([Call("torch.ones", [3, 3], {}, mine)])()
    derived = [
        ("operator.mul", [Ref(x), 1000.0], {}),
        ("operator.getitem", [Ref(x), [0, 0, 0, 0, 0, 0]], {}),  # one row, six times
        ("torch.Tensor.sum", [Ref(x), 0], {"keepdim": True}),
        ("torch.matmul", [Ref(mine), Ref(x)], {}),
    ]
    for op, args, kwargs in derived:
        made = next(ids)
        exchange([Call(op, args, kwargs, made)])()
        if op == "torch.Tensor.sum":  # then repeated: n rows that each hold every row's sum
            repeated = next(ids)
            exchange([Call("torch.Tensor.repeat", [Ref(made), 1000, 1], {}, repeated)])()
            made = repeated
        done, got = release_of(made, good)
        assert isinstance(done, Failure) and done.kind == "NotAllowedError", (op, done)
        assert "only as it was published" in done.message
    # The scientist's own tensor, a list holding the data, a published item passed twice.
    for arg, refs in ((Ref(mine), 0), ([Ref(x)], 0), ([Ref(x), Ref(x)], 0)):
        done, _ = release_of(arg, good, refs=refs)
        assert isinstance(done, Failure), (arg, done)
    assert float(owner.ask(f"spent {CLIENT} secret")) == spent  # nothing refused was charged
    # Releasing into the id of an object whose request waits for the owner would accept it.
    waiting = next(ids)
    exchange([Call("operator.mul", [Ref(x), 1.0], {}, waiting)])()
    [pending] = exchange([Get([waiting], "for the owner", "", 0.0)])()
    assert isinstance(pending, Failure) and pending.kind == "RequestPendingError"
    [done] = exchange([Call(RELEASE, [x, good], {}, waiting, refs=1)])()
    assert isinstance(done, Failure) and "has a request waiting" in done.message
    [still] = exchange([Get([waiting])])()  # the refused call failed the id: nothing leaves
    assert isinstance(still, Failure) and owner.ask("requests") == "1"  # and it still waits
    # The node keeps serving: a good release still comes back, and nothing private leaked.
    done, got = release_of(x, good)
    assert isinstance(done, Done) and isinstance(got, Value) and got.value[0].shape == (4,)
    assert owner.ask("intact") == "True"
    assert not leaked(replies, PRIVATE)
    [budget] = scientist.client.call(BUDGET, [], kind="object").get()  # type: ignore[union-attr]
    assert (budget["epsilon"], budget["dataset"]) == (50.0, "secret") and budget["spent"] > 1


# ---- the Duet API, in process -----------------------------------------------------------------


@pytest.fixture
def duet() -> Iterator[tuple[OwnerDuet, ScientistDuet]]:
    with open_duet() as pair:
        yield pair


@contextlib.contextmanager
def open_duet(ledger: Path | None = None) -> Iterator[tuple[OwnerDuet, ScientistDuet]]:
    """A Duet owner (keeping its spend in `ledger`) and its scientist, CLIENT, without the
    rendezvous service: the owner's node behind the real websocket server."""
    node = DuetNode("duet-budget", confirm=False)  # the first hello is the scientist's
    server = ServerThread(WorkerServer(node, port=0, token=TOKEN)).start()
    owner = OwnerDuet(node, server, "session", dp_ledger=ledger)
    transport = WebsocketTransport(server.url, TOKEN)
    scientist = ScientistDuet(transport, transport.worker_id, CLIENT)
    scientist.client.submit(Call(HELLO, [CLIENT, 5.0], {}, None))
    scientist.flush()
    try:
        yield owner, scientist
    finally:
        scientist.close()
        owner.close()


def test_gaussian_releases_compose_by_rdp_as_the_accountants_say(duet):
    owner, scientist = duet
    owner.publish(SECRET.clone(), tags=["secret"])
    owner.grant(epsilon=2.0, delta=1e-5, dataset="secret")
    rows = scientist.store["secret"]
    z, sensitivity = 20.0, math.sqrt(4) * 2e6
    allowed = max(k for k in range(1, 200) if epsilon([Steps(z, 1.0, k)], 1e-5) <= 2.0)
    released = 0
    with pytest.raises(errors.RemoteError, match="BudgetError"):
        while released < 1000:
            rows.publish("sum", bounds=WIDE, sigma=z * sensitivity)
            released += 1
    assert released == allowed == 86
    [budget] = scientist.budget
    spent = budget["spent"]
    assert spent == pytest.approx(epsilon([Steps(z, 1.0, allowed)], 1e-5))
    assert spent == pytest.approx(dp_accounting_epsilon(z, allowed, 1e-5), rel=0.01)
    assert spent <= 2.0


def test_the_spend_survives_a_restart_of_the_owner(tmp_path):
    with open_duet(tmp_path / "ledger.json") as (owner, scientist):
        owner.publish(SECRET.clone(), tags=["secret"])
        owner.grant(epsilon=0.05, delta=1e-5)
        x = scientist.store["secret"]
        for _ in range(5):
            x.publish("sum", bounds=WIDE, mechanism="laplace", epsilon=0.01)
    again = Owner(tmp_path / "ledger.json")  # the owner again, in a process of its own
    try:
        assert again.ask(f"grant {CLIENT} 0.05 1e-5") == CLIENT
        assert float(again.ask(f"spent {CLIENT}")) == pytest.approx(0.05)
        worker = again.join()
        with pytest.raises(errors.RemoteError, match=r"ε = 0.05 is spent \(0 remains\)"):
            worker.published("secret").publish(
                "count", bounds=WIDE, mechanism="laplace", epsilon=0.001
            )
        worker.close()
    finally:
        again.stop()


def test_a_grant_lets_the_scientist_publish_and_the_owner_sees_every_spend(duet):
    owner, scientist = duet
    data = torch.rand(500, 3)
    labels = (data[:, 0] * 4).long()
    data.send(owner, pointable=True, tags=["data"], description="500 rows")
    owner.publish((data, labels), tags=["pair"])
    x = scientist.store["data"]
    with pytest.raises(errors.RemoteError, match="granted you no privacy budget"):
        x.publish("mean", bounds=(0, 1), sigma=1.0)
    assert scientist.budget == []
    owner.grant(epsilon=3.0, delta=1e-6)
    assert [(b["epsilon"], b["spent"], b["remaining"]) for b in scientist.budget] == [
        (3.0, 0.0, 3.0)
    ]
    mean = x.publish("mean", bounds=(0, 1), sigma=30.0, name="feature means", reason="eda")
    assert mean.shape == (3,) and (mean >= 0).all() and (mean <= 1).all()
    hist = scientist.store["pair"][1].publish(
        "histogram", bounds=(0, 3), bins=4, mechanism="laplace", epsilon=1.0
    )
    exact = torch.histc(labels.double(), bins=4, min=0, max=3)
    assert hist.shape == (4,) and (hist - exact).abs().max() < 40  # scale 1: P(miss) ~ 1e-17
    [budget] = scientist.budget
    gaussian = epsilon([Steps(30.0 / math.sqrt(3), 1.0, 2)], 1e-6)  # a mean: sum and count
    assert budget["spent"] == pytest.approx(gaussian + 1.0)
    assert budget["remaining"] == pytest.approx(3.0 - gaussian - 1.0)
    table = owner.requests.pandas
    assert list(table["name"]) == ["feature means", "dp histogram"]
    assert list(table["status"]) == ["accepted", "accepted"]
    assert "ε = 1 charged" in table["reason"][1] and table["reason"][0].startswith("eda (")
    assert owner.requests.audit[0]["decision"] == "granted"
    assert [a["by"] for a in owner.requests.audit[1:]] == ["budget duet mallory"] * 2
    assert owner.budgets.pandas["releases"].tolist() == [2]
    with pytest.raises(errors.RemoteError, match=r"is spent \([\d.]+ remains\) and this gaussian"):
        x.publish("sum", bounds=(0, 1), sigma=0.01)
    assert len(owner.requests.pandas) == 2  # the refused release released nothing


def test_concurrent_releases_cannot_overspend_one_account():
    budgets = Budgets()
    for client in map(str, range(8)):
        budgets.grant(client, 1.0, 1e-5, account="shared")  # eight sessions, one account
    data = torch.rand(20, 2)
    query = {"aggregate": "count", "bounds": [0.0, 1.0], "mechanism": "laplace", "epsilon": 0.01}
    released, refused = [], []

    def scientist(client: str) -> None:
        for _ in range(30):
            try:
                released.append(release(data, query, budgets, client, ("k",)))
            except BudgetError:
                refused.append(client)

    threads = [threading.Thread(target=scientist, args=(c,)) for c in map(str, range(8))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(released) == 100 and len(refused) == 140
    assert budgets.ledger.spent("duet shared", 1e-5) == pytest.approx(1.0)


# ---- the mechanisms ---------------------------------------------------------------------------


def draws(query: dict, data: torch.Tensor, n: int) -> torch.Tensor:
    """`n` releases of `query` on `data` as the node computes them, uncharged."""
    asked = Query.parse(query)
    how = plan(asked, math.prod(data.shape[1:]))
    return torch.stack([noisy(asked, data, how) for _ in range(n)])


def test_the_noise_has_the_scale_the_sensitivity_gives():
    data = torch.rand(50, 4) * 4 - 1  # values in [-1, 3]
    exact = data.double().clamp(-2, 2).sum(0)  # clipped to bounds (-2, 2): m = 2, d = 4
    gaussian = draws({"aggregate": "sum", "bounds": [-2.0, 2.0], "sigma": 3.0}, data, 2000)
    assert (gaussian.mean(0) - exact).abs().max() < 4 * 3.0 / math.sqrt(2000)
    assert ((gaussian.std(0) - 3.0).abs() < 0.2).all()  # sigma is the noise on the sum
    laplace = draws(
        {"aggregate": "sum", "bounds": [-2.0, 2.0], "mechanism": "laplace", "epsilon": 0.5},
        data,
        2000,
    )
    scale = 4 * 2 / 0.5  # L1 = d * m
    assert (laplace.mean(0) - exact).abs().max() < 4 * scale * math.sqrt(2 / 2000)
    assert ((laplace.std(0) / (scale * math.sqrt(2)) - 1).abs() < 0.1).all()
    # Laplace: P(|noise| > scale) = e^-1
    assert (((laplace - exact).abs() > scale).double().mean() - math.exp(-1)).abs() < 0.025
    count = draws({"aggregate": "count", "bounds": [0.0, 1.0], "sigma": 2.0}, data, 2000)
    assert abs(count.mean() - 50) < 0.25 and abs(count.std() - 2.0) < 0.15


def test_values_are_clipped_and_a_mean_divides_by_a_noisy_count():
    data = torch.tensor([[0.5], [7.0], [-3.0], [math.nan], [math.inf], [0.25]])
    quiet = {"bounds": [0.0, 1.0], "mechanism": "laplace", "epsilon": 1e9}
    [clipped] = draws({**quiet, "aggregate": "sum"}, data, 1)
    assert clipped.item() == pytest.approx(0.5 + 1 + 0 + 0 + 1 + 0.25)  # NaN counts as low
    [mean] = draws({**quiet, "aggregate": "mean"}, data, 1)
    assert mean.item() == pytest.approx(2.75 / 6)
    # A mean's count is noised too (the size stays hidden): with an empty dataset the noisy
    # sum over a noisy count, kept within bounds, is all that comes back.
    means = draws({"aggregate": "mean", "bounds": [0.0, 1.0], "sigma": 5.0}, data[:0], 200)
    assert ((means >= 0) & (means <= 1)).all() and means.std() > 0
    how = plan(Query.parse({**quiet, "aggregate": "mean", "epsilon": 0.5}), 1)
    assert (how.noise, how.count_noise, how.cost.pure) == (4.0, 4.0, 0.5)  # ε/2 on each part
    how = plan(Query.parse({"aggregate": "mean", "bounds": [0.0, 2.0], "sigma": 4.0}), 9)
    assert how.cost.steps == Steps(4.0 / 6.0, 1.0, 2) and how.count_noise == 4.0 / 6.0
    histogram = draws({**quiet, "aggregate": "histogram", "bins": 2}, data, 1)
    assert histogram.tolist() == [pytest.approx([3.0, 3.0])]  # NaN, -3 low; 7, inf high


def dp_accounting_epsilon(noise: float, count: int, delta: float) -> float:
    """k Gaussian mechanisms composed by Google's dp-accounting (an independent check)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise), count)
    return accountant.get_epsilon(delta)
