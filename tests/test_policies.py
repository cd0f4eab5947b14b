"""Release policies against real `tether worker` processes (issue 22, class 1).

A hostile scientist connects to a worker that publishes MNIST digits 0-3 privately and tries
to get the images out: through the Python API, and by speaking the wire protocol directly
(frames built with `tether.wire`, sent on the client's connection or on a bare socket).
Under the default policy, `training`, every route is refused with a NotAllowedError that names
the policy and what does leave, no private value comes back, and the worker keeps serving:
a legitimate delegated `fit` afterwards still trains and returns its weights. `--policy open`
releases the same values (and warns at start); `--policy strict` files a request instead.

One worker process per policy, started once for the module.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from conftest import TOKEN, WorkerProcess, leaked, private_values

import tether as sy
from tether.cli.demo import mnist_tensors
from tether.errors import NotAllowedError, RequestPendingError
from tether.federated.delegated.modelspec import describe
from tether.federated.delegated.remote import dataset_pointers, remote_evaluate, remote_fit
from tether.federated.delegated.training import EvalConfig, TrainConfig
from tether.federated.models import mlp
from tether.node import Node, Release
from tether.ops import PUBLISHED
from tether.transports.websocket.frames import Reader, header, xor_mask
from tether.wire import Call, Delete, Done, Failure, Get, Put, Ref, Value, decode, encode

SAMPLES = 96
REFUSAL = "release policy is 'training'"
WHAT_LEAVES = "tether.federated.fit"
ARGS = ("--dataset", "mnist", "--labels", "0-3", "--samples", str(SAMPLES), "--quiet")


def _private() -> tuple[torch.Tensor, torch.Tensor]:
    """The worker's data, made here as `tether worker --labels 0-3 --samples 96` makes it."""
    data, targets = mnist_tensors(train=True)
    keep = (targets < 4).nonzero().flatten()[:SAMPLES]
    return data[keep].contiguous(), targets[keep].contiguous()


DATA, TARGETS = _private()
# What a leak would carry: the images' distinct values and statistics (not the labels 0-3,
# which ids and counts in any reply could equal by chance).
PRIVATE = private_values(DATA.flatten().unique())


@pytest.fixture(scope="module")
def training() -> Iterator[WorkerProcess]:
    process = WorkerProcess("--id", "alice", *ARGS)  # the default policy
    yield process
    process.stop()


@pytest.fixture(scope="module")
def scientist(training: WorkerProcess) -> Iterator[sy.WebsocketClientWorker]:
    with training.connect() as worker:
        yield worker


@pytest.fixture(scope="module")
def mallory(training: WorkerProcess) -> Iterator[sy.WebsocketClientWorker]:
    """A second connection, for hand-built frames (its ids are its own)."""
    with training.connect() as worker:
        yield worker


def exchange(worker: sy.WebsocketClientWorker, *commands: object) -> list:
    """Send hand-built commands on the worker's connection; its replies, one per command."""
    return worker.client.transport.exchange(list(commands))()


def assert_training_refusal(reply: object) -> None:
    assert isinstance(reply, Failure), reply
    assert reply.kind == "NotAllowedError", reply
    assert REFUSAL in reply.message and WHAT_LEAVES in reply.message, reply.message


def assert_serves(worker: sy.WebsocketClientWorker) -> None:
    """The worker still answers a normal command of the same client."""
    assert torch.equal((torch.ones(2).send(worker) + 1).get(), torch.full((2,), 2.0))


# ---- the default policy: training -------------------------------------------------------------

D, L, T, A, B, C, E = 1, 2, 100, 3, 4, 5, 6
SHAPE = [SAMPLES, 1, 28, 28]
ROW = [
    Call("operator.getitem", [Ref(D), 0], {}, A),
    Call("torch.Tensor.reshape", [Ref(A), [-1]], {}, B),
]

# Each route: the commands that compute, under id T, something that holds the private images
# (or labels); the Get of T that follows must be refused.
ROUTES: dict[str, list] = {
    "data * 1": [Call("operator.mul", [Ref(D), 1], {}, T)],
    "data + 0": [Call("operator.add", [Ref(D), 0], {}, T)],
    "clone": [Call("torch.Tensor.clone", [Ref(D)], {}, T)],
    "cat": [Call("torch.cat", [[Ref(D), Ref(D)]], {}, T)],
    "pad": [Call("torch.nn.functional.pad", [Ref(D), [0, 1]], {}, T)],
    "sum(0)": [Call("torch.Tensor.sum", [Ref(D), 0], {}, T)],
    "reshape and back": [
        Call("torch.Tensor.reshape", [Ref(D), [-1]], {}, A),
        Call("torch.Tensor.reshape", [Ref(A), SHAPE], {}, T),
    ],
    "index_select": [
        Put(A, torch.arange(SAMPLES)),
        Call("torch.index_select", [Ref(D), 0, Ref(A)], {}, T),
    ],
    "slicing": [Call("operator.getitem", [Ref(D), slice(0, SAMPLES)], {}, T)],
    "to(float64)": [Call("torch.Tensor.to", [Ref(D), torch.float64], {}, T)],
    "torch.stack": [Call("torch.stack", [[Ref(D)]], {}, T)],
    "F.linear with an identity": [
        Call("torch.Tensor.reshape", [Ref(D), [SAMPLES, 784]], {}, A),
        Put(B, torch.eye(784)),
        Call("torch.nn.functional.linear", [Ref(A), Ref(B)], {}, T),
    ],
    "a list holding a derived tensor": [
        Call("operator.mul", [Ref(D), 1], {}, A),
        Call("builtins.list", [[Ref(A)]], {}, T),
    ],
    "a tuple holding a derived tensor": [
        Call("operator.mul", [Ref(D), 1], {}, A),
        Call("builtins.tuple", [[Ref(A), 1]], {}, T),
    ],
    "a list of mine, a derived item set in": [
        Put(T, [torch.zeros(1)]),
        Call("operator.mul", [Ref(D), 1], {}, A),
        Call("operator.setitem", [Ref(T), 0, Ref(A)], {}, None),
    ],
    "a module whose parameter was assigned from data (its state_dict)": [
        *ROW,
        Call("torch.nn.Linear", [784, 1], {}, C),
        Call("torch.nn.Module.parameters", [Ref(C)], {}, E),
        Call("operator.getitem", [Ref(E), 0], {}, 7),
        Call("tether.assign", [Ref(7), Ref(B)], {}, None),
        Call("torch.nn.Module.state_dict", [Ref(C)], {}, T),
    ],
    "a module whose parameter was assigned from data (its parameter list)": [
        *ROW,
        Call("torch.nn.Linear", [784, 1], {}, C),
        Call("torch.nn.Module.parameters", [Ref(C)], {}, T),
        Call("operator.getitem", [Ref(T), 0], {}, 7),
        Call("tether.assign", [Ref(7), Ref(B)], {}, None),
    ],
    "a view of my tensor, the tensor then written": [
        *ROW,
        Put(C, torch.zeros(784)),
        Call("torch.Tensor.view", [Ref(C), [28, 28]], {}, T),
        Call("torch.Tensor.copy_", [Ref(C), Ref(B)], {}, None),
    ],
    "out= my tensor": [
        *ROW,
        Put(T, torch.zeros(784)),
        Call("torch.add", [Ref(B), 0], {"out": Ref(T)}, None),
    ],
    "a gradient": [
        *ROW,
        Put(C, torch.zeros(784, requires_grad=True)),
        Call("torch.dot", [Ref(B), Ref(C)], {}, E),
        Call("torch.Tensor.backward", [Ref(E)], {}, None),
        Call("torch.Tensor.grad", [Ref(C)], {}, T),
    ],
    "tolist": [Call("torch.Tensor.tolist", [Ref(D)], {}, T)],
    "item": [
        *ROW,
        Call("torch.Tensor.sum", [Ref(B)], {}, C),
        Call("torch.Tensor.item", [Ref(C)], {}, T),
    ],
    "the labels * 1": [Call("operator.mul", [Ref(L), 1], {}, T)],
    "the data itself": [Call("torch.Tensor.detach", [Ref(D)], {}, T)],
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_training_refuses_every_route_out_for_the_private_data(mallory, route: str) -> None:
    """Hand-built frames: the computation runs (the scientist may compute on the data), the
    Get of its result is refused, naming the policy and what does leave, with no private
    value in any reply; the connection keeps serving."""
    replies = exchange(
        mallory,
        Call(PUBLISHED, ["mnist", 0], {}, D),
        Call(PUBLISHED, ["mnist", 1], {}, L),
        *ROUTES[route],
        Get([T]),
    )
    *computed, refused = replies
    assert all(type(r) is Done for r in computed), computed
    assert_training_refusal(refused)
    assert not leaked(refused, PRIVATE)
    assert_serves(mallory)


def test_training_refuses_the_python_api_routes(scientist) -> None:
    data, targets = scientist.dataset("mnist")
    eye = torch.eye(784).send(scientist)
    routes = {
        "data * 1": lambda: data * 1,
        "data + 0": lambda: data + 0,
        "clone": lambda: data.clone(),
        "cat": lambda: torch.cat([data, data]),
        "pad": lambda: F.pad(data, (0, 1)),
        "sum(0)": lambda: data.sum(0),
        "reshape and back": lambda: data.reshape(-1).reshape(SAMPLES, 1, 28, 28),
        "index_select": lambda: data.index_select(0, torch.arange(SAMPLES).send(scientist)),
        "slicing": lambda: data[:SAMPLES],
        "to(float64)": lambda: data.to(torch.float64),
        "torch.stack": lambda: torch.stack([data]),
        "F.linear with an identity": lambda: F.linear(data.reshape(SAMPLES, 784), eye),
        "labels": lambda: targets * 1,
        "the data": lambda: data,
    }
    for name, route in routes.items():
        with pytest.raises(NotAllowedError, match=REFUSAL) as refused:
            route().get()
        assert WHAT_LEAVES in str(refused.value), name
        assert not leaked(str(refused.value), PRIVATE), name
    # asking the owner changes nothing: a training worker files no request, waits for none
    derived = data * 1
    started = time.monotonic()
    with pytest.raises(NotAllowedError, match=REFUSAL):
        derived.get(request_block=True, name="train_size", reason="please", timeout_secs=20)
    assert time.monotonic() - started < 10
    with pytest.raises(NotAllowedError, match=REFUSAL):
        derived.request("train_size", "please")
    # a model trained on the data through pointers (the driven style): it stays there
    # (backward writes only the gradients: the weights are still the scientist's own until a
    # step writes the gradients into them)
    model = torch.nn.Linear(784, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.send(scientist)
    model(data.reshape(SAMPLES, 784)).sum().backward()
    with pytest.raises(NotAllowedError, match=REFUSAL):
        model.weight.grad.get()
    optimizer.step()
    with pytest.raises(NotAllowedError, match=REFUSAL):
        model.get()
    assert_serves(scientist)


def test_training_refuses_on_a_bare_socket(training) -> None:
    """A peer with no tether client at all: a websocket handshake and masked binary frames."""
    sock = socket.create_connection(("127.0.0.1", training.port), timeout=10)
    try:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response
        reader = Reader(masked=False, max_message=2**24)
        early = [response.split(b"\r\n\r\n", 1)[1]]  # frame bytes read with the handshake

        def feed(chunk: bytes) -> list:
            buffer = reader.buffer()
            buffer[: len(chunk)] = chunk
            return reader.advance(len(chunk))

        def ask(*commands: object) -> list:
            payload = bytes(encode(list(commands)))
            key = os.urandom(4)
            body = bytearray(payload)
            xor_mask(memoryview(body), key)
            sock.sendall(header(0x2, len(payload), mask=key) + body)
            events = feed(early.pop()) if early and early[0] else []
            while not any(kind == "message" for kind, _ in events):
                n = sock.recv_into(reader.buffer())
                assert n, "the worker closed the connection"
                events = reader.advance(n)
            (message,) = [m for kind, m in events if kind == "message"]
            return decode(bytes(message))

        replies = ask(
            Call(PUBLISHED, ["mnist", 0], {}, D),
            Call("operator.mul", [Ref(D), 1], {}, T),
            Get([T]),
            Get([D]),
            Put(A, torch.ones(2)),
            Get([A]),
        )
        assert [type(r) for r in replies[:2]] == [Done, Done]
        assert_training_refusal(replies[2])
        assert_training_refusal(replies[3])
        assert isinstance(replies[5], Value) and torch.equal(replies[5].value[0], torch.ones(2))
        assert not leaked(replies, PRIVATE)
    finally:
        sock.close()


def _fit_and_evaluate(worker) -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    spec = describe(mlp())
    dataset = dataset_pointers(worker.client, "mnist")
    config = TrainConfig(batch_size=32, max_batches=3, optimizer_args={"lr": 0.1}, seed=1)
    answer = remote_fit(worker.client, dataset, spec, config)
    scores = remote_evaluate(worker.client, dataset, {"m": spec}, EvalConfig(batch_size=64))
    return spec["state"], answer, scores["m"]


def test_after_the_attacks_a_delegated_fit_and_evaluate_still_train_and_leave(
    training, scientist, mallory
) -> None:
    """The websocket tutorial's flow under the default policy: fit's weights and metrics and
    evaluate's scores are what leave a training worker."""
    for worker in (scientist, mallory):  # both connections were attacked above
        before, answer, scores = _fit_and_evaluate(worker)
        assert answer["weights"].keys() == before.keys()
        assert answer["samples"] == 96 and answer["batches"] == 3
        assert len(answer["losses"]) == 3 and all(loss > 0 for loss in answer["losses"])
        assert all(torch.isfinite(w).all() for w in answer["weights"].values())
        assert any(not torch.equal(answer["weights"][k], before[k]) for k in before)  # trained
        assert scores["samples"] == SAMPLES and 0 <= scores["accuracy"] <= 1
        assert sum(scores["predicted"]) == SAMPLES
    assert training.proc.poll() is None


def test_a_fit_result_leaves_as_fit_returned_it(mallory) -> None:
    """What a routine returned leaves as it was when it returned: a write into it through
    pointers afterwards (of the data itself) does not leave with it, and what is computed from
    the result through pointers is not the routine's result."""
    spec = describe(mlp())
    config = TrainConfig(batch_size=32, max_batches=1, seed=1).to_dict()
    R, W, Wk = 200, 201, 202
    key = next(iter(spec["state"]))
    replies = exchange(
        mallory,
        Call(PUBLISHED, ["mnist", 0], {}, D),
        Call(PUBLISHED, ["mnist", 1], {}, L),
        Call("tether.federated.fit", [spec, Ref(D), Ref(L), config], {}, R),
        Get([R]),
        Call("operator.getitem", [Ref(R), "weights"], {}, W),
        Call("operator.getitem", [Ref(W), key], {}, Wk),
        *ROW,
        Call("torch.Tensor.copy_", [Ref(Wk), Ref(B)], {}, None),  # every row: the first image
        Get([R]),
        Get([Wk]),
        Get([W]),
        Delete([R, W, Wk]),
    )
    assert all(type(r) is Done for r in replies[4:-4]), replies[4:-4]
    first, second = replies[3], replies[-4]
    assert isinstance(first, Value) and isinstance(second, Value), (first, second)
    before, after = first.value[0]["weights"][key], second.value[0]["weights"][key]
    assert before.shape == (200, 784) and torch.equal(before, after)
    assert not torch.equal(after[0], DATA[0].flatten())  # the image written in stayed there
    assert_training_refusal(replies[-3])  # the written tensor itself
    assert_training_refusal(replies[-2])  # computed from the result: not the routine's result
    assert_serves(mallory)


def _fit_on_weights_from_the_data(worker, how: str) -> list:
    """fit, its spec's weights set from the data (a view of it, or derived), nearly no step."""
    spec = describe(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, SAMPLES)))
    spec["state"]["1.weight"] = Ref(B)
    config = TrainConfig(batch_size=8, max_batches=1, optimizer_args={"lr": 1e-12}).to_dict()
    weights = [Call("torch.Tensor.reshape", [Ref(D), [SAMPLES, 784]], {}, A)]
    if how == "view":
        weights.append(Call("torch.Tensor.view", [Ref(A), [SAMPLES, 784]], {}, B))
    elif how == "written into mine":  # the object is the scientist's; its memory is the data
        weights += [
            Put(B, torch.zeros(SAMPLES, 784)),
            Call("torch.Tensor.copy_", [Ref(B), Ref(A)], {}, None),
        ]
    else:
        weights.append(Call("operator.mul", [Ref(A), 1], {}, B))
    return exchange(
        worker,
        Call(PUBLISHED, ["mnist", 0], {}, D),
        Call(PUBLISHED, ["mnist", 1], {}, L),
        *weights,
        Call("tether.federated.fit", [spec, Ref(D), Ref(L), config], {}, T),
        Get([T]),
    )


@pytest.mark.parametrize("how", ["view", "derived", "written into mine"])
def test_a_routine_given_the_data_elsewhere_than_as_its_data_releases_nothing(
    mallory, open_worker, how: str
) -> None:
    """fit releases what it returns only when the owner's data reached it as its data: a spec
    whose weights are the images would otherwise hand them back (as an open worker shows)."""
    *_, refused = _fit_on_weights_from_the_data(mallory, how)
    assert_training_refusal(refused)
    with open_worker.connect() as worker:
        *_, released = _fit_on_weights_from_the_data(worker, how)
    weights = released.value[0]["weights"]["1.weight"]
    assert torch.allclose(weights, DATA.reshape(SAMPLES, 784), atol=1e-6)
    assert_serves(mallory)


def test_the_owner_declares_an_aggregate_that_leaves() -> None:
    """Besides the registered routines, an owner may declare an aggregate of its own: its
    result leaves a training node; the same counts computed through pointers do not."""
    node = Node("owner")
    assert node.release is Release.TRAINING  # the default
    node.publish("labels", TARGETS.clone())
    node.declare("tether.owner.label_counts", lambda t: torch.bincount(t, minlength=10).tolist())
    with pytest.raises(ValueError, match="already"):
        node.declare("tether.owner.label_counts", len)
    with pytest.raises(ValueError, match=r"tether\.<owner>\.<name>"):
        node.declare("counts", len)

    def send(*commands: object) -> list:
        return decode(node.run(encode(list(commands)), "scientist").parts().join())

    replies = send(
        Call(PUBLISHED, ["labels"], {}, 1),
        Call("tether.owner.label_counts", [Ref(1)], {}, 2),
        Get([2]),
        Call("torch.bincount", [Ref(1)], {"minlength": 10}, 3),
        Get([3]),
    )
    assert replies[2].value[0] == torch.bincount(TARGETS, minlength=10).tolist()
    assert_training_refusal(replies[4])
    assert "tether.owner.label_counts" in replies[4].message
    other = Node("other")  # declared on one node only
    reply = decode(
        other.run(encode([Call("tether.owner.label_counts", [1], {}, 1)])).parts().join()
    )
    assert reply[0].kind == "NotAllowedError" and "not in the allowlist" in reply[0].message


def test_training_says_nothing_of_failures_on_the_data(mallory) -> None:
    """An op failing on private data may say why in values (a label out of range, say), and
    whether it failed is itself a bit of the data: a training worker answers it as it answers
    a success (the result is poisoned), and refuses it at `.get()` as it refuses any result
    computed from the data. On the scientist's own data it says what failed."""
    replies = exchange(
        mallory,
        Call(PUBLISHED, ["mnist", 1], {}, L),
        Put(A, torch.zeros(SAMPLES, 2)),
        Put(B, torch.zeros(SAMPLES, 10)),
        Call("torch.nn.functional.nll_loss", [Ref(A), Ref(L)], {}, T),
        Call("torch.nn.functional.nll_loss", [Ref(B), Ref(L)], {}, T + 1),
        Get([T]),
        Get([T + 1]),
        Put(C, torch.zeros(2, 2)),
        Put(D, torch.tensor([0, 7])),
        Call("torch.nn.functional.nll_loss", [Ref(C), Ref(D)], {}, T),
    )
    failed, ran = replies[3], replies[4]  # labels 0-3 are out of range for 2 classes, not 10
    assert failed == ran == Done(), (failed, ran)
    assert replies[5].kind == replies[6].kind == "NotAllowedError"
    assert replies[5].message.replace(str(T), str(T + 1)) == replies[6].message
    assert "Target 7 is out of bounds" in replies[9].message, replies[9]
    assert_serves(mallory)


def test_the_policy_is_chosen_by_name() -> None:
    assert Release.parse("strict") is Release.STRICT
    with pytest.raises(ValueError, match="choose one of open, training, strict"):
        Node("owner", release="closed")


# ---- open and strict ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_worker() -> Iterator[WorkerProcess]:
    process = WorkerProcess("--id", "olive", "--policy", "open", *ARGS)
    yield process
    process.stop()


def test_open_warns_at_start_and_releases_the_data_computed_on(open_worker) -> None:
    assert "release policy: open" in open_worker.lines
    log = open_worker.log.read_text()
    assert "WARNING: release policy 'open'" in log and "(data * 1).get()" in log
    with open_worker.connect() as worker:
        data, targets = worker.dataset("mnist")
        assert torch.equal((data * 1).get(), DATA)  # the private images, byte for byte
        assert torch.equal(torch.cat([targets, targets]).get(), torch.cat([TARGETS] * 2))
        with pytest.raises(RequestPendingError):  # the data itself: only by request
            data.get()


# Routes whose result is a view of the owner's memory: that is the data itself, which no
# policy releases without an accepted request.
VIEWS = {"reshape and back", "slicing", "the data itself"}


@pytest.mark.parametrize("route", list(ROUTES))
def test_open_releases_every_route_but_views_of_the_data(open_worker, route: str) -> None:
    """The same frames that training refuses: open answers them with values (a view of the
    owner's memory with a request, as under every policy)."""
    with open_worker.connect() as worker:
        *computed, released = exchange(
            worker,
            Call(PUBLISHED, ["mnist", 0], {}, D),
            Call(PUBLISHED, ["mnist", 1], {}, L),
            *ROUTES[route],
            Get([T]),
        )
    assert all(type(r) is Done for r in computed), computed
    if route in VIEWS:
        assert isinstance(released, Failure) and released.kind == "RequestPendingError"
        return
    assert isinstance(released, Value), released
    if "module" in route:  # the parameter assigned from the data is the first image
        state = released.value[0]
        weight = state["weight"] if isinstance(state, dict) else state[0]
        assert torch.equal(weight.flatten(), DATA[0].flatten())


def test_strict_files_a_request_for_what_is_computed_from_the_data() -> None:
    process = WorkerProcess("--id", "stella", "--policy", "strict", *ARGS)
    try:
        assert "release policy: strict" in process.lines
        with process.connect() as worker:
            data, _ = worker.dataset("mnist")
            with pytest.raises(RequestPendingError, match=r"request \d+ waits for the owner"):
                (data * 1).get()
            dataset = dataset_pointers(worker.client, "mnist")
            with pytest.raises(RequestPendingError):  # strict: even fit's result is asked for
                remote_fit(worker.client, dataset, describe(mlp()), TrainConfig(max_batches=1))
            assert_serves(worker)
    finally:
        process.stop()


# ---- the egress decision itself ---------------------------------------------------------------


def test_may_leave_walks_the_memory_of_what_the_reply_carries() -> None:
    """`policy.may_leave` is the one decision: by policy, by the object's mark, by its grant,
    and (outside open) by the memory of every tensor the reply would carry."""
    from tether.node.guard import DERIVED, Guard
    from tether.node.policy import may_leave
    from tether.node.store import Grant, Privacy, Stored

    guard = Guard(max_elements=2**20, max_flops=2**30)
    secret = torch.arange(4.0)
    guard.mark(secret, DERIVED)
    # marked as mine, but a container holding a view of derived memory (a hole in the marks)
    aliasing = Stored([{"w": secret.view(2, 2)}, 3])
    mine = Stored([torch.ones(2), torch.empty(0), "text", (1.5, None)])
    for release in Release:
        assert may_leave(mine, release, guard).leaves
        assert may_leave(aliasing, release, guard).leaves is (release is Release.OPEN)
        assert not may_leave(Stored(secret.clone(), Privacy.PRIVATE), release, guard).leaves
    routine = Stored(torch.zeros(2), Privacy.DERIVED, grant=Grant("r", torch.ones(2)))
    assert torch.equal(may_leave(routine, Release.TRAINING, guard).value, torch.ones(2))
    assert not may_leave(routine, Release.STRICT, guard).leaves
    assert may_leave(routine, Release.OPEN, guard).value is routine.value
    with pytest.raises(TypeError, match="fetch its state_dict"):
        may_leave(Stored(torch.nn.Linear(1, 1)), Release.OPEN, guard)
    # what is held back is not looked at: a refusal tells nothing of what the value is
    held = Stored(torch.nn.Linear(1, 1), Privacy.DERIVED)
    assert not may_leave(held, Release.STRICT, guard).leaves


def test_tether_worker_documents_its_policies(capsys) -> None:
    from tether.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["worker"]).policy == "training"
    assert parser.parse_args(["worker", "--policy", "strict"]).policy == "strict"
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--policy", "closed"])
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--policy {open,training,strict}" in text
    for words in ("training (default)", "delegated fit/evaluate", "strict:", "prints a warning"):
        assert words in text, words
