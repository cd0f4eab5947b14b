"""Hostile scientists against real owner processes, speaking the wire protocol directly.

Each attack comes from issue 22's classes 2-7 (class 1 is in test_policies.py; rendezvous,
requests and resources have files of their own). The owner runs in its own process
(tests/owner_process.py): a Duet node ("strict": D) or a network worker's node ("training":
W) behind the real websocket server. Every test asserts that the attack fails (nothing
private in any reply, the owner's data unchanged) and that the node keeps serving: a normal
computation on the scientist's own data still comes back right afterwards.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import LOGS, _die_with_parent, leaked, private_values
from owner_process import SECRET, TOKEN

import tether as sy
from tether.duet.names import HELLO
from tether.ops import PUBLISHED, REQUEST
from tether.wire import Call, Delete, Done, Failure, Get, Put, Ref, Value

PRIVATE = private_values(SECRET)
SCRIPT = Path(__file__).with_name("owner_process.py")


class Owner:
    """tests/owner_process.py in a child process."""

    def __init__(self, policy: str) -> None:
        self.log = (LOGS / f"owner-{policy}.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--policy", policy],
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

    def stop(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.kill()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def duet() -> Iterator[Owner]:
    owner = Owner("strict")
    yield owner
    owner.stop()


@pytest.fixture(scope="module")
def worker() -> Iterator[Owner]:
    owner = Owner("training")
    yield owner
    owner.stop()


class Scientist:
    """A raw wire client: hand-built commands, one reply each."""

    ids = itertools.count(1000)

    def __init__(self, owner: Owner, hello: bool) -> None:
        self.worker = sy.connect(owner.url, token=TOKEN)
        self.owner = owner
        self.replies: list = []
        if hello:
            assert self.send(Call(HELLO, ["mallory", 5.0], {}, None)) == [Done()]

    def send(self, *commands: object) -> list:
        replies = self.worker.client.transport.exchange(list(commands))()
        self.replies += replies
        return replies

    def new(self) -> int:
        return next(self.ids)

    def published(self, key: str, item: int | None = None) -> int:
        obj = self.new()
        args = [key] if item is None else [key, item]
        [reply] = self.send(Call(PUBLISHED, args, {}, obj))
        assert isinstance(reply, Done), reply
        return obj

    def put(self, value: object) -> int:
        obj = self.new()
        [reply] = self.send(Put(obj, value))
        assert isinstance(reply, Done), reply
        return obj

    def call(self, op: str, args: list, kwargs: dict | None = None) -> int:
        obj = self.new()
        [reply] = self.send(Call(op, args, kwargs or {}, obj))
        assert isinstance(reply, Done), reply
        return obj

    def get(self, obj: int, name: str = "") -> Value | Failure:
        [reply] = self.send(Get([obj], name, "a test", 0.0) if name else Get([obj]))
        return reply

    def assert_serves(self) -> None:
        """A computation on the scientist's own data still comes back right, and nothing
        private was in any reply (values, descriptions, error texts)."""
        mine = self.put(torch.ones(2))
        [reply] = self.send(Get([self.call("operator.add", [Ref(mine), 1])]))
        assert isinstance(reply, Value) and torch.equal(reply.value[0], torch.full((2,), 2.0))
        assert not leaked(self.replies, PRIVATE)
        assert self.owner.ask("intact") == "True"

    def close(self) -> None:
        self.worker.close()


@pytest.fixture(scope="module")
def duet_scientist(duet: Owner) -> Iterator[Scientist]:
    """A duet has one scientist (one connection), for all of this module's attacks."""
    scientist = Scientist(duet, hello=True)
    yield scientist
    scientist.close()


@pytest.fixture
def d(duet_scientist: Scientist) -> Iterator[Scientist]:
    yield duet_scientist
    duet_scientist.assert_serves()


@pytest.fixture
def w(worker: Owner) -> Iterator[Scientist]:
    scientist = Scientist(worker, hello=False)
    yield scientist
    scientist.assert_serves()
    scientist.close()


def held_back(reply: object) -> bool:
    """A strict node's answer to a Get of what needs the owner's approval."""
    return isinstance(reply, Failure) and reply.kind == "RequestPendingError"


def refused_by_training(reply: object) -> bool:
    return isinstance(reply, Failure) and reply.kind == "NotAllowedError"


# ---- 2. Taint follows memory ---------------------------------------------------------------


def test_a_view_written_through_its_base_is_held_back(d: Scientist) -> None:
    secret = d.published("secret")
    mine = d.put(torch.zeros(3, 4))
    view = d.call("torch.Tensor.view", [Ref(mine), -1])
    d.call("torch.Tensor.copy_", [Ref(mine), Ref(secret)])
    assert held_back(d.get(view))
    assert held_back(d.get(mine))


def test_out_into_my_tensor_is_held_back(d: Scientist) -> None:
    secret = d.published("secret")
    mine = d.put(torch.zeros(3, 4))
    d.send(Call("torch.add", [Ref(secret), 0], {"out": Ref(mine)}, None))
    assert held_back(d.get(mine))


def test_a_list_holding_a_tensor_written_later_is_held_back(d: Scientist) -> None:
    secret = d.published("secret")
    mine = d.put(torch.zeros(3, 4))
    holder = d.call("builtins.list", [[Ref(mine)]])
    d.call("torch.Tensor.copy_", [Ref(mine), Ref(secret)])
    assert held_back(d.get(holder))


def test_a_parameter_assigned_private_values_is_held_back_in_the_state_dict(d: Scientist) -> None:
    secret = d.published("secret")
    layer = d.call("torch.nn.Linear", [4, 3])
    params = d.call("torch.nn.Module.parameters", [Ref(layer)])
    weight = d.call("operator.getitem", [Ref(params), 0])
    d.send(Call("tether.assign", [Ref(weight), Ref(secret)], {}, None))
    state = d.call("torch.nn.Module.state_dict", [Ref(layer)])
    assert held_back(d.get(state))


@pytest.mark.parametrize("norm", ["batch_norm", "instance_norm"])
def test_running_statistics_written_from_private_data_are_held_back(
    d: Scientist, norm: str
) -> None:
    """BatchNorm writes its running statistics without a write annotation in its schema and
    without bumping the version counter; the guard counts them as written anyway."""
    secret = d.published("secret")
    mean, var = d.put(torch.zeros(4)), d.put(torch.ones(4))
    if norm == "batch_norm":
        args, kwargs = [Ref(secret), Ref(mean), Ref(var)], {"training": True}
    else:
        batch = d.call("torch.Tensor.reshape", [Ref(secret), [1, 4, 3]])
        mean, var = d.put(torch.zeros(4)), d.put(torch.ones(4))
        args, kwargs = [Ref(batch), Ref(mean), Ref(var)], {"use_input_stats": True}
    d.call(f"torch.nn.functional.{norm}", args, kwargs)
    assert held_back(d.get(mean)) and held_back(d.get(var))


def test_a_number_computed_from_private_data_taints_what_it_fills(d: Scientist) -> None:
    secret = d.published("secret")
    total = d.call("torch.Tensor.item", [Ref(d.call("torch.Tensor.sum", [Ref(secret)]))])
    filled = d.call("torch.full", [[3], Ref(total)])
    assert held_back(d.get(filled))
    assert held_back(d.get(total))


def test_gradients_and_optimizer_state_from_private_data_are_held_back(d: Scientist) -> None:
    secret = d.published("secret")
    weight = d.call("torch.nn.Parameter", [Ref(d.put(torch.ones(3, 4)))])
    optimizer = d.call("torch.optim.Adam", [[Ref(weight)]])
    loss = d.call("torch.Tensor.sum", [Ref(d.call("operator.mul", [Ref(secret), Ref(weight)]))])
    d.send(Call("torch.Tensor.backward", [Ref(loss)], {}, None))
    grad = d.call("torch.Tensor.grad", [Ref(weight)])
    assert held_back(d.get(grad))
    d.send(Call("torch.optim.Optimizer.step", [Ref(optimizer)], {}, None))
    assert held_back(d.get(weight))


def test_training_holds_back_a_view_written_through_its_base(w: Scientist) -> None:
    secret = w.published("secret")
    mine = w.put(torch.zeros(3, 4))
    view = w.call("torch.Tensor.view", [Ref(mine), -1])
    w.call("torch.Tensor.copy_", [Ref(mine), Ref(secret)])
    assert refused_by_training(w.get(view))
    layer = w.call("torch.nn.Linear", [4, 3])
    assert isinstance(w.get(layer), Failure)  # a module is not data: fetch its state_dict


def test_training_holds_back_running_statistics_torch_does_not_call_written(
    w: Scientist,
) -> None:
    """BatchNorm's schema has no write annotation on its running statistics; a training node
    (which marks only the writes torch knows of, not every argument as strict does) takes
    them from torch's `_SchemaInfo`."""
    secret = w.published("secret")
    mean, var = w.put(torch.zeros(4)), w.put(torch.ones(4))
    w.call("torch.nn.functional.batch_norm", [Ref(secret), Ref(mean), Ref(var)], {"training": True})
    assert refused_by_training(w.get(mean)) and refused_by_training(w.get(var))


# ---- 3. An approval binds to what the owner saw ------------------------------------------


def _request(d: Scientist, obj: int, name: str) -> str:
    status = d.call(REQUEST, [Ref(obj), name, "for a test"])
    [reply] = d.send(Get([status]))
    assert isinstance(reply, Value), reply
    return reply.value[0]


def test_rebinding_an_approved_id_releases_what_the_owner_saw(d: Scientist) -> None:
    secret = d.published("secret")
    zero = d.new()
    d.send(Call("operator.mul", [Ref(d.call("torch.Tensor.sum", [Ref(secret)])), 0], {}, zero))
    assert _request(d, zero, "approved") == "accepted"  # the owner's handler saw 0.0
    d.send(Call("torch.Tensor.clone", [Ref(secret)], {}, zero))  # the same id, now the data
    reply = d.get(zero)
    assert isinstance(reply, Value) and reply.value[0].item() == 0.0


def test_writing_into_an_approved_value_releases_what_the_owner_saw(d: Scientist) -> None:
    secret = d.published("secret")
    zero = d.call("operator.mul", [Ref(secret), 0])
    assert _request(d, zero, "approved") == "accepted"
    d.send(Call("torch.Tensor.add_", [Ref(zero), Ref(secret)], {}, None))
    reply = d.get(zero)
    assert isinstance(reply, Value) and torch.equal(reply.value[0], torch.zeros(3, 4))


def test_an_approval_releases_once(d: Scientist) -> None:
    secret = d.published("secret")
    zero = d.call("torch.Tensor.sum", [Ref(d.call("operator.mul", [Ref(secret), 0]))])
    mean = d.call("torch.Tensor.item", [Ref(zero)])
    assert _request(d, mean, "scalar") == "accepted"
    assert isinstance(d.get(mean), Value)
    again = d.get(mean)  # a second Get is a new request: no handler takes it by that empty name
    assert held_back(again)


def test_a_constrained_handler_does_not_take_a_rebound_value(d: Scientist) -> None:
    secret = d.published("secret")
    value = d.call("torch.Tensor.item", [Ref(d.call("torch.Tensor.mean", [Ref(secret)]))])
    d.send(Call("torch.Tensor.clone", [Ref(secret)], {}, value))  # the whole data, same id
    assert _request(d, value, "scalar") == "pending"  # not one float: it waits for the owner
    assert held_back(d.get(value, name="scalar"))


# ---- 4. Failures and sizes tell nothing (strict) -----------------------------------------


def test_a_wrong_number_of_results_is_not_reported(d: Scientist) -> None:
    secret = d.published("secret")
    outs = [d.new(), d.new()]
    replies = d.send(Call("torch.Tensor.split", [Ref(secret), 1], {}, outs))
    assert replies == [Done([None, None])]
    assert all(held_back(d.get(o)) for o in outs)


def test_indexing_by_a_private_value_gives_the_same_reply_whatever_it_is(d: Scientist) -> None:
    secret = d.published("secret")
    rows = d.put(torch.zeros(400_000))
    replies = []
    for i in range(12):
        index = d.call(
            "torch.Tensor.long", [Ref(d.call("operator.getitem", [Ref(secret), (i // 4, i % 4)]))]
        )
        [reply] = d.send(Call("operator.getitem", [Ref(rows), Ref(index)], {}, d.new()))
        replies.append(reply)
    assert replies == [Done()] * 12  # in range (271,828) or not (1,286,022): one answer


@pytest.mark.parametrize("threshold", [0.0, 300000.0, 1e9])
def test_masked_select_says_nothing_of_how_many(d: Scientist, threshold: float) -> None:
    secret = d.published("secret")
    mask = d.call("operator.gt", [Ref(secret), threshold])
    [reply] = d.send(Call("torch.masked_select", [Ref(secret), Ref(mask)], {}, d.new()))
    assert reply == Done()


def test_size_guards_on_private_values_are_quiet(d: Scientist) -> None:
    secret = d.published("secret")
    labels = d.call("torch.Tensor.long", [Ref(secret)])
    replies = d.send(
        Call("torch.nn.functional.one_hot", [Ref(labels)], {}, d.new()),
        Call("torch.Tensor.expand", [Ref(secret), [2**20, 3, 4]], {}, d.new()),
        Call("torch.Tensor.repeat", [Ref(secret), 2**12, 2**12], {}, d.new()),
    )
    assert replies == [Done()] * 3


def test_a_private_loader_does_not_say_where_it_ends(d: Scientist) -> None:
    rows = d.published("rows")
    loader = d.call("tether.data.DataLoader", [Ref(rows)], {"batch_size": 2})
    iterator = d.call("builtins.iter", [Ref(loader)])
    replies = [d.send(Call("builtins.next", [Ref(iterator)], {}, d.new()))[0] for _ in range(4)]
    assert replies == [Done()] * 4  # two batches, then no StopIteration either
    length = d.call("builtins.len", [Ref(rows)])
    assert held_back(d.get(length))


def test_a_poisoned_value_released_by_the_owner_carries_no_text(d: Scientist) -> None:
    secret = d.published("secret")
    bad = d.call("torch.mm", [Ref(secret), Ref(secret)])  # 3x4 @ 3x4: fails
    reply = d.get(bad, name="approved")
    assert isinstance(reply, Failure) and reply.kind == "PoisonedValueError"
    assert "mat1" not in reply.message and "[3, 4]" not in reply.message


def test_the_scientists_own_mistakes_still_say_what_went_wrong(d: Scientist) -> None:
    mine = d.put(torch.ones(3, 4))
    [reply] = d.send(Call("torch.mm", [Ref(mine), Ref(mine)], {}, d.new()))
    assert isinstance(reply, Failure) and "[3, 4] X [3, 4]" in reply.message, reply


# ---- 5. Fresh memory is zeroed -------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("torch.empty", [100_000]),
        ("torch.Tensor.new_empty", ["MINE", [100_000]]),
        ("torch.empty_like", ["BIG"]),
    ],
)
def test_fresh_memory_holds_nothing_freed_before(d: Scientist, op: str, args: list) -> None:
    secret = d.published("secret")
    big = d.call("torch.Tensor.repeat", [Ref(secret), 2_500, 1])  # 120,000 private values
    d.send(Delete([big]))
    big = d.put(torch.ones(300, 400))
    mine = d.put(torch.ones(2))
    args = [Ref(mine) if a == "MINE" else Ref(big) if a == "BIG" else a for a in args]
    reply = d.get(d.call(op, args))
    assert isinstance(reply, Value) and not reply.value[0].any()


def test_training_gives_one_client_no_memory_another_freed(worker: Owner) -> None:
    first, second = Scientist(worker, hello=False), Scientist(worker, hello=False)
    secret = first.published("secret")
    big = first.call("torch.Tensor.repeat", [Ref(secret), 2_500, 1])
    first.send(Delete([big]))
    reply = second.get(second.call("torch.empty", [120_000]))
    assert isinstance(reply, Value) and not reply.value[0].any()
    for scientist in (first, second):
        scientist.assert_serves()
        scientist.close()


@pytest.mark.parametrize("op", ["torch.Tensor.resize_", "torch.Tensor.set_", "torch.empty_strided"])
def test_no_route_to_uninitialized_memory_is_listed(w: Scientist, op: str) -> None:
    mine = w.put(torch.ones(2))
    [reply] = w.send(Call(op, [Ref(mine), [1000]], {}, w.new()))
    assert isinstance(reply, Failure) and reply.kind == "NotAllowedError"


# ---- 6. The owner's data is never changed ------------------------------------------------


@pytest.mark.parametrize("policy", ["strict", "training"])
def test_no_write_reaches_the_owners_data(request: pytest.FixtureRequest, policy: str) -> None:
    s = request.getfixturevalue("d" if policy == "strict" else "w")
    pair = s.published("pair")
    images = s.call("operator.getitem", [Ref(pair), 0])
    s.send(Call("torch.Tensor.add_", [Ref(images), 1.0], {}, None))
    pieces = [s.new(), s.new(), s.new()]
    s.send(Call("torch.split", [Ref(s.published("secret")), 1], {}, pieces))
    s.send(Call("torch.Tensor.mul_", [Ref(pieces[0]), 0], {}, None))
    row = s.call("operator.getitem", [Ref(s.published("secret")), 0])
    s.call(
        "torch.nn.functional.batch_norm",
        [Ref(s.put(torch.ones(2, 4))), Ref(row), Ref(row)],
        {"training": True},
    )
    rows = s.published("rows")
    loader = s.call("tether.data.DataLoader", [Ref(rows)], {"batch_size": 3})
    s.call("builtins.next", [Ref(s.call("builtins.iter", [Ref(loader)]))])
    s.call(
        "torch.nn.functional.instance_norm",
        [Ref(s.put(torch.ones(1, 4, 2))), Ref(row), Ref(row)],
        {"use_input_stats": True},
    )
    weight = s.call("torch.nn.Parameter", [Ref(s.published("secret"))])
    optimizer = s.call("torch.optim.SGD", [[Ref(weight)]], {"lr": 1.0})
    s.send(
        Call("torch.Tensor.backward", [Ref(s.call("torch.Tensor.sum", [Ref(weight)]))], {}, None)
    )
    s.send(Call("torch.optim.Optimizer.step", [Ref(optimizer)], {}, None))
    # (the fixture then asks the owner process whether its tensors still hold their values)


# ---- 7. Every command's cost is bounded before it runs (per aten op) ----------------------


@pytest.mark.parametrize(
    "attack",
    [
        "mm of two 16384 x 16384",
        "arange with tensor bounds",
        "cartesian_prod",
        "expand then add",
        "a wide hidden layer",
    ],
)
def test_costly_commands_are_refused_before_they_run(w: Scientist, attack: str) -> None:
    """Each would take seconds to minutes of CPU or gigabytes; each is refused at once, with
    the worker's memory barely moved."""
    rss = _rss_kb(w.owner)
    one = w.put(torch.ones(1, 1))
    if attack == "mm of two 16384 x 16384":
        big = w.call("torch.Tensor.expand", [Ref(one), [16384, 16384]])
        command = Call("torch.mm", [Ref(big), Ref(big)], {}, w.new())
    elif attack == "arange with tensor bounds":
        low, high = w.put(torch.tensor(0)), w.put(torch.tensor(2**31))
        command = Call("torch.arange", [Ref(low), Ref(high)], {}, w.new())
    elif attack == "cartesian_prod":
        row = w.put(torch.ones(20_000))
        command = Call("torch.cartesian_prod", [Ref(row), Ref(row)], {}, w.new())
    elif attack == "expand then add":
        wide = w.call("torch.Tensor.expand", [Ref(one), [2**14, 2**14]])  # a view: no memory
        command = Call("operator.add", [Ref(wide), Ref(w.put(torch.ones(4, 1, 1)))], {}, w.new())
    else:  # a layer 65,536 wide on a batch of 8,192: 2**29 activations
        weight = w.call("torch.Tensor.expand", [Ref(one), [2**16, 4]])
        batch = w.call("torch.Tensor.expand", [Ref(one), [2**13, 4]])  # 2**29 outputs
        command = Call("torch.nn.functional.linear", [Ref(batch), Ref(weight)], {}, w.new())
    started = time.monotonic()
    [reply] = w.send(command)
    assert isinstance(reply, Failure) and reply.kind == "LimitError", reply
    assert time.monotonic() - started < 5
    assert _rss_kb(w.owner) - rss < 200_000


def _rss_kb(owner: Owner) -> int:
    status = Path(f"/proc/{owner.proc.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
