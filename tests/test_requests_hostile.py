"""Requests against a hostile scientist (issue 22, class 9): a Duet owner's node (strict) served
by the real websocket server on 127.0.0.1, and a scientist speaking the wire protocol directly.
Each attack fails, and the owner's desk and the node keep serving: a normal request afterwards
is answered."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import torch
from conftest import leaked, private_values

from tether.duet.names import HELLO
from tether.duet.node import DuetNode
from tether.duet.owner import OwnerDuet
from tether.node.requests import digest
from tether.ops import PUBLISHED, REQUEST
from tether.transports.websocket import ServerThread, WebsocketTransport, WorkerServer
from tether.wire import Call, Done, Failure, Get, Put, Ref, Value

SECRET = torch.tensor([[271828.0, 314159.0], [161803.0, 141421.0], [173205.0, 223606.0]])
PRIVATE = private_values(SECRET)
TOKEN = "hostile-requests-token"
FLOOD = 5000  # requests one frame files
CAP = 256  # what a client may keep waiting (Requests' default)
PROMPT = 1.0  # seconds the owner's desk may take to list or answer, however flooded


class Scientist:
    """A raw wire client: frames of commands in, replies out, ids of its own choosing."""

    def __init__(self, url: str) -> None:
        self.transport = WebsocketTransport(url, TOKEN)
        self._next = 1000
        self.received: list = []
        [hello] = self.send([Call(HELLO, ["scientist-1", 5.0], {}, None)])
        assert type(hello) is Done, hello

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def send(self, commands: list) -> list:
        replies = list(self.transport.exchange(commands)())
        self.received.append(replies)
        return replies

    def call(self, op: str, *args) -> int:
        out = self.new_id()
        [reply] = self.send([Call(op, list(args), {}, out)])
        assert type(reply) is Done, reply
        return out


@pytest.fixture
def duet() -> Iterator[tuple[OwnerDuet, Scientist, int]]:
    """An owner's Duet publishing SECRET, and a confirmed scientist holding a pointer to it."""
    node = DuetNode("duet-hostile", confirm=False)
    server = ServerThread(WorkerServer(node, port=0, token=TOKEN)).start()
    owner = OwnerDuet(node, server, "hostile-session")
    try:
        key = owner.publish(SECRET.clone(), tags=["secret"], description="three private rows")
        scientist = Scientist(server.url)
        try:
            yield owner, scientist, scientist.call(PUBLISHED, key)
        finally:
            scientist.transport.close()
    finally:
        owner.close()


def _still_serving(owner: OwnerDuet, scientist: Scientist, x: int) -> None:
    """The owner's desk answers at once, and a normal request is answered: the training set's
    size, through the tutorial's constrained handler; and the scientist's own data comes back."""
    start = time.perf_counter()
    listed = (len(owner.requests), repr(owner.requests), list(owner.requests))
    assert time.perf_counter() - start < PROMPT, "the owner's desk is slow to list requests"
    assert listed[0] == len(listed[2])
    owner.requests.add_handler(name="train_size", action="accept", max_elements=1, dtype=int)
    size = scientist.call("builtins.len", Ref(x))
    [got] = scientist.send([Get([size], "train_size", "to write the training loop", 5.0)])
    assert got == Value([len(SECRET)])
    ones = scientist.call("torch.ones", 2)
    plus = scientist.call("operator.add", Ref(ones), 1)
    assert torch.equal(scientist.send([Get([plus])])[0].value[0], torch.full((2,), 2.0))


def test_one_frame_filing_5000_requests_keeps_256_waiting_and_the_desk_responsive(duet):
    owner, scientist, x = duet
    derived = [scientist.new_id() for _ in range(FLOOD)]
    statuses = [scientist.new_id() for _ in range(FLOOD)]
    frame = [Call("operator.add", [Ref(x), float(i)], {}, d) for i, d in enumerate(derived)]
    frame += [
        Call(REQUEST, [Ref(d), f"req{i}", "flood"], {}, s)
        for i, (d, s) in enumerate(zip(derived, statuses, strict=True))
    ]
    frame.append(Put(scientist.new_id(), 1.0))  # the frame's other commands still run
    start = time.perf_counter()
    replies = scientist.send(frame)
    took = time.perf_counter() - start
    print(f"one frame of {FLOOD} requests answered in {took:.2f} s")
    filed, refused = replies[FLOOD : FLOOD + CAP], replies[FLOOD + CAP : 2 * FLOOD]
    assert all(type(r) is Done for r in replies[:FLOOD] + filed + replies[-1:])
    assert {(type(r), r.kind) for r in refused} == {(Failure, "LimitError")}
    assert f"{CAP} requests of this client already wait" in refused[0].message
    assert scientist.send([Get(statuses[:CAP])]) == [Value(["pending"] * CAP)]
    assert len(owner.requests) == CAP and owner.requests[0].name == "req0"
    start = time.perf_counter()
    table = owner.requests.pandas
    owner.requests[0].accept()
    owner.requests[0].deny()  # two answers: two places free again
    assert time.perf_counter() - start < PROMPT, "the owner's desk is slow to answer"
    assert len(table) == CAP and set(table["status"]) == {"pending"}
    assert len(owner.requests) == CAP - 2
    _still_serving(owner, scientist, x)
    assert not leaked(scientist.received, PRIVATE)


def test_one_frame_of_5000_named_gets_files_at_most_256_requests(duet):
    owner, scientist, x = duet
    derived = [scientist.new_id() for _ in range(FLOOD)]
    frame = [Call("operator.mul", [Ref(x), float(i)], {}, d) for i, d in enumerate(derived)]
    frame += [Get([d], f"get{i}", "flood", 0.0) for i, d in enumerate(derived)]
    frame += [Get([derived[0]], "again", "the same object", 0.0)] * 100  # one per object
    replies = scientist.send(frame)
    asked, again = replies[FLOOD : 2 * FLOOD], replies[2 * FLOOD :]
    assert [r.kind for r in asked[:CAP]] == ["RequestPendingError"] * CAP
    assert {r.kind for r in asked[CAP:]} == {"LimitError"}
    assert {r.kind for r in again} == {"RequestPendingError"}
    assert {r.message for r in again} == {asked[0].message}  # the same request, filed once
    assert [r.name for r in owner.requests] == [f"get{i}" for i in range(CAP)]
    for request in list(owner.requests)[:10]:
        request.deny()
    _still_serving(owner, scientist, x)
    assert not leaked(scientist.received, PRIVATE)


@pytest.mark.parametrize(
    ("smuggled", "seen"),
    [("torch.Tensor.sum", ("Tensor", "float32", 1)), ("torch.Tensor.tolist", ("list", "float", 6))],
)
def test_a_request_named_train_size_carrying_the_data_waits_for_the_owner(duet, smuggled, seen):
    """The tutorial's handler, saying what it accepts, does not accept what does not fit."""
    owner, scientist, x = duet
    owner.requests.add_handler(name="train_size", action="accept", max_elements=1, dtype=int)
    carried = scientist.call(smuggled, Ref(x))
    [waited] = scientist.send([Get([carried], "train_size", "the size, honest", 0.3)])
    assert (type(waited), waited.kind) == (Failure, "PermissionDeniedError")
    assert "timed out" in waited.message  # as if no handler were there: never denied
    status = scientist.call(REQUEST, Ref(carried), "train_size", "the size, honest")
    assert scientist.send([Get([status])]) == [Value(["pending"])]
    [request] = owner.requests
    assert (request.status, request.handler, request.name) == ("pending", None, "train_size")
    assert (request.kind, request.dtype, request.elements) == seen  # the owner sees: no size
    assert [(e["decision"], e["by"]) for e in owner.requests.audit] == [("timed out", "timeout")]
    request.deny()
    _still_serving(owner, scientist, x)
    assert not leaked(scientist.received, PRIVATE)


def test_the_seeds_unconstrained_handler_still_accepts_by_name_and_warned(duet, caplog):
    """The Duet seed's own `add_handler(name="train_size", action="accept")`: the owner's
    choice, honoured; the owner was warned, and the request shows what it carried."""
    owner, scientist, x = duet
    with caplog.at_level(logging.WARNING, logger="tether.node.requests"):
        owner.requests.add_handler(name="train_size", action="accept")
    assert ["'train_size' has no constraints" in r.getMessage() for r in caplog.records] == [True]
    total = scientist.call("torch.Tensor.sum", Ref(x))
    [got] = scientist.send([Get([total], "train_size", "the seed's name", 5.0)])
    assert type(got) is Value and got.value[0].item() == SECRET.sum().item()
    [entry] = owner.requests.audit
    assert (entry["decision"], entry["by"], entry["type"], entry["elements"]) == (
        "accepted",
        "handler train_size",
        "Tensor",
        1,
    )
    assert entry["digest"] == digest(SECRET.sum())  # the owner's record of what left
    [request] = owner.requests.matching("scientist-1", total, "accepted")
    assert "an unconstrained handler" in repr(request)
    _still_serving(owner, scientist, x)
    assert leaked(scientist.received, PRIVATE) == [SECRET.sum().item()]  # that, and only that
