"""Private data leaves a strict (Duet-style) node only through an accepted request, once."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import Replies, join, leaked, private_values
from torch import nn

import tether as sy
from tether import errors
from tether.node import Release
from tether.ops import PUBLISHED

# Values no id, size or count could equal: any of them (or a sum or mean of them) in what comes
# back to the scientist is a leak.
SECRET = torch.tensor([[31.4159, 27.1828, 16.1803], [14.1421, 17.3205, 22.3606]])
PRIVATE = private_values(SECRET)
LABELS = torch.tensor([2, 0])
ANSWER = 5.0  # seconds to wait for an answer a handler gives at once: a broken desk fails


@pytest.fixture
def owner(make_worker):
    """A strict worker publishing a private dataset tagged 'mnist'."""
    worker = make_worker("owner")
    worker.node.release = Release.STRICT
    worker.publish("secret", SECRET.clone(), tags=("mnist",), description="two rows")
    worker.publish("labels", LABELS.clone(), tags=("mnist",), description="their labels")
    return worker


def _dataset(worker):
    return worker.client.call(PUBLISHED, ["secret"]), worker.client.call(PUBLISHED, ["labels"])


def test_the_leak_detector_finds_private_values_however_they_are_written():
    """So that an empty `leaked(...)` below means something."""
    for form in (SECRET, SECRET[1], SECRET.sum(), str(SECRET), repr(SECRET.mean(0))):
        assert leaked(form, PRIVATE), form
    assert leaked(f"the value is {SECRET[0, 1].item():.4}.", PRIVATE) == [27.18]
    assert leaked({"loss": [(1, SECRET[1, 2].item())]}, PRIVATE) == [SECRET[1, 2].item()]
    assert not leaked("request 3 for object 12 of shape (2, 3) on 0a31b4159c: 4.1421", PRIVATE)


def test_nothing_computed_from_private_data_leaves_without_a_request(owner):
    replies = Replies(owner.client)
    x, y = _dataset(owner)
    model = nn.Linear(3, 3).send(owner)
    output = model(x)
    loss = F.cross_entropy(output, y)
    loss.backward()
    attempts = {
        "dataset": x,
        "x + 0": x + 0,
        "clone": x.clone(),
        "sum": x.sum(),
        "x[0]": x[1],
        "model output": output,
        "loss": loss,
        "weight.grad": model.weight.grad,
        "weight after training on x": model.weight,
    }
    for what, pointer in attempts.items():
        with pytest.raises(errors.RequestPendingError, match="waits for the owner's answer"):
            pointer.get()
        assert pointer.get(request_block=True, name=what, timeout_secs=0.05) is None, what
        assert not leaked([repr(pointer), str(pointer)], PRIVATE), what
    with pytest.raises(errors.RemoteError) as failure:
        (x @ torch.ones(2, 2)).get()  # the error text of an op on x is withheld
    assert not leaked(failure.value, PRIVATE) and "withholds" in str(failure.value)
    # the scientist's own data stays theirs
    assert torch.equal(torch.ones(2).send(owner).get(), torch.ones(2))
    assert len(replies.received) > 2 * len(attempts)
    assert not leaked(replies.received, PRIVATE)  # not in any value, meta or error text
    assert [e["decision"] for e in owner.node.requests.audit] == ["timed out"] * len(attempts)


def test_an_accepted_request_releases_exactly_that_object_once(owner):
    replies = Replies(owner.client)
    x, _ = _dataset(owner)
    total, other = x.sum(), x.mean()
    assert total.request(name="total", reason="a sum is fine") == "pending"
    [request] = list(owner.node.requests)
    assert (request.name, request.reason, request.status) == ("total", "a sum is fine", "pending")
    request.accept()
    assert total.get(delete=False).item() == SECRET.sum().item()
    with pytest.raises(errors.RequestPendingError):
        total.get()  # released once
    with pytest.raises(errors.RequestPendingError):
        other.get()  # and nothing else
    assert leaked(replies.received, PRIVATE) == [pytest.approx(SECRET.sum().item())]
    log = owner.node.requests.audit
    assert [(e["name"], e["decision"], e["by"]) for e in log] == [("total", "accepted", "owner")]


def test_a_denied_request_releases_nothing_and_cannot_be_decided_again(owner):
    x, _ = _dataset(owner)
    total = x.sum()
    assert total.request(name="total", reason="please") == "pending"
    [request] = list(owner.node.requests)
    request.deny()
    with pytest.raises(errors.PermissionDeniedError):
        total.get()  # files a new request: the denied one releases nothing
    with pytest.raises(ValueError, match="already denied by owner"):
        request.accept()
    log = owner.node.requests.audit
    assert [(e["name"], e["decision"], e["by"]) for e in log] == [("total", "denied", "owner")]


def test_cleared_handlers_decide_nothing_more(owner):
    x, _ = _dataset(owner)
    desk = owner.node.requests
    desk.add_handler(tags=["mnist"], action="accept")
    assert (
        x.sum().get(request_block=True, name="before", timeout_secs=ANSWER).item()
        == SECRET.sum().item()
    )
    desk.clear_handlers()
    assert x.sum().get(request_block=True, name="after", timeout_secs=0.05) is None
    assert [(e["name"], e["decision"]) for e in desk.audit] == [
        ("before", "accepted"),
        ("after", "timed out"),
    ]


def test_a_get_of_several_objects_releases_all_or_none(owner):
    x, _ = _dataset(owner)
    total, other = x.sum(), x.mean()
    mine = torch.arange(3.0).send(owner)
    total.request(name="total", reason="a sum is fine")
    [request] = list(owner.node.requests)
    request.accept()
    with pytest.raises(errors.PermissionDeniedError):
        sy.get_all([mine, total, other])  # `other` was never approved: nothing leaves
    assert torch.equal(mine.get(delete=False), torch.arange(3.0))  # nor was anything spent
    got_mine, got_total = owner.client.get([mine.id, total.id], delete=False)
    assert torch.equal(got_mine, torch.arange(3.0)) and got_total.item() == SECRET.sum().item()
    with pytest.raises(errors.PermissionDeniedError):
        total.get()  # the accepted request was spent by that get, not by the refused one


def test_handlers_by_name_and_tag_and_which_wins(owner, capsys):
    x, _ = _dataset(owner)
    desk = owner.node.requests
    desk.add_handler(name="loss", action="deny", print_local=True)
    desk.add_handler(tags=["mnist"], action="accept")
    desk.add_handler(name="cuda_is_available", action="accept")
    assert (
        x.sum().get(request_block=True, name="loss", timeout_secs=ANSWER) is None
    )  # name beats tag
    assert "deny" in capsys.readouterr().out  # the owner saw the value it denied
    assert (
        x.max().get(request_block=True, name="anything", timeout_secs=ANSWER).item()
        == SECRET.max().item()
    )
    desk.add_handler(name="loss", tags=["mnist"], action="accept")  # name + tag beats name
    assert (
        x.min().get(request_block=True, name="loss", timeout_secs=ANSWER).item()
        == SECRET.min().item()
    )
    desk.add_handler(name="loss", tags=["mnist"], action="deny")  # equal: the newest wins
    assert x.min().get(request_block=True, name="loss", timeout_secs=ANSWER) is None
    decisions = [(e["name"], e["decision"]) for e in desk.audit]
    assert decisions == [
        ("loss", "denied"),
        ("anything", "accepted"),
        ("loss", "accepted"),
        ("loss", "denied"),
    ]


def test_handlers_expire_and_requests_time_out(owner):
    x, _ = _dataset(owner)
    owner.node.requests.add_handler(name="soon", action="accept", timeout_secs=0.05)
    time.sleep(0.1)
    start = time.perf_counter()
    assert x.sum().get(request_block=True, name="soon", timeout_secs=0.2) is None
    assert time.perf_counter() - start >= 0.2
    assert owner.node.requests.audit[-1]["decision"] == "timed out"


def test_a_waiting_get_is_woken_by_the_answer_not_by_a_poll(owner):
    x, _ = _dataset(owner)
    answered = threading.Event()

    def answer_soon():
        deadline = time.monotonic() + 5
        while not list(owner.node.requests) and time.monotonic() < deadline:
            time.sleep(0.001)
        if list(owner.node.requests):
            owner.node.requests[0].accept()
            answered.set()

    answering = threading.Thread(target=answer_soon, daemon=True)
    answering.start()
    start = time.perf_counter()
    got = x.sum().get(request_block=True, name="sum", timeout_secs=5)
    waited = time.perf_counter() - start
    join(answering, 10)
    assert answered.is_set(), "no request was filed within 5 s"
    assert got.item() == SECRET.sum().item()
    assert waited < 0.5


def test_requests_table_for_the_owner(owner):
    pytest.importorskip("pandas")
    x, _ = _dataset(owner)
    x.sum().request(name="train_size", reason="to plan the epochs")
    table = owner.node.requests.pandas
    assert list(table.columns) == ["id", "name", "reason", "requester", "object", "status", "time"]
    assert table.iloc[0]["name"] == "train_size" and table.iloc[0]["status"] == "pending"


def test_federated_mode_releases_derived_results_but_not_the_data(make_worker):
    worker = make_worker("fl")
    worker.publish("secret", SECRET.clone())
    x = worker.client.call(PUBLISHED, ["secret"])
    assert x.sum().get().item() == SECRET.sum().item()
    with pytest.raises(errors.PermissionDeniedError):
        x.get()


def test_owner_data_cannot_be_changed_in_place(owner):
    x, _ = _dataset(owner)
    x.add_(1)
    x[0].zero_()  # a view of the owner's data is protected too
    with pytest.raises(errors.NotAllowedError, match="in place"):
        owner.flush()
    assert torch.equal(owner.node.published["secret"].value, SECRET)


def test_worker_accepts_a_strict_policy_at_creation():
    worker = sy.VirtualWorker("duet-like", release="strict")
    assert worker.node.release is Release.STRICT
    assert sy.VirtualWorker("tutorial").node.release is Release.OPEN
    with pytest.raises(ValueError, match="choose one of open, training, strict"):
        sy.VirtualWorker("typo", release="closed")
