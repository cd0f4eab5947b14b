"""Private data leaves a strict (Duet-style) node only through an accepted request, once."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import Replies, join, leaked, private_values
from torch import nn

import tether as sy
from tether import errors
from tether.errors import LimitError
from tether.node import Release, Requests
from tether.node.requests import digest
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
    # an op on x that fails (shapes do not match) is not reported: its result is poisoned,
    # and held back as any other (the owner sees why when asked to release it)
    with pytest.raises(errors.RequestPendingError) as failure:
        (x @ torch.ones(2, 2)).get()
    assert not leaked(failure.value, PRIVATE)
    [poisoned] = [r for r in owner.node.requests.pending() if "Poisoned" in r.kind]
    assert "[2, 3] X [2, 2]" in repr(poisoned.snapshot)  # the cause, for the owner
    # the scientist's own data stays theirs
    assert torch.equal(torch.ones(2).send(owner).get(), torch.ones(2))
    assert len(replies.received) > 2 * len(attempts)
    assert not leaked(replies.received, PRIVATE)  # not in any value, meta or error text
    assert [e["decision"] for e in owner.node.requests.audit] == ["timed out"] * len(attempts)
    # accepted, a poisoned value leaves as an error with no text
    poisoned.accept()
    with pytest.raises(errors.PoisonedValueError) as failure:
        owner.client.get([poisoned.obj_id], delete=False)
    assert "owner's log" in str(failure.value) and "[2, 3]" not in str(failure.value)


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
    assert list(table.columns) == [
        *("id", "name", "reason", "requester", "object", "status", "time"),
        *("type", "dtype", "shape", "elements", "digest", "provenance"),
    ]
    row = table.iloc[0]
    assert (row["name"], row["status"], row["type"], row["dtype"]) == (
        "train_size",
        "pending",
        "Tensor",
        "float32",
    )
    assert (row["shape"], row["elements"], row["digest"]) == ("()", 1, digest(SECRET.sum()))


def test_federated_mode_releases_derived_results_but_not_the_data(make_worker):
    worker = make_worker("fl")
    worker.publish("secret", SECRET.clone())
    x = worker.client.call(PUBLISHED, ["secret"])
    assert x.sum().get().item() == SECRET.sum().item()
    with pytest.raises(errors.PermissionDeniedError):
        x.get()


@pytest.mark.parametrize("release", [Release.OPEN, Release.STRICT])
def test_owner_data_cannot_be_changed_in_place(owner, release):
    """Refused (on a strict node quietly: the refusal is about private data) and, whatever
    gets through, the owner's data is not reached: clients hold copy-on-write clones."""
    owner.node.release = release
    x, _ = _dataset(owner)
    x.add_(1)
    x[0].zero_()  # a view of the owner's data is protected too
    if release is Release.OPEN:
        with pytest.raises(errors.NotAllowedError, match="in place"):
            owner.flush()
    owner.flush()
    F.batch_norm(torch.zeros(4, 3).send(owner), x[0], x[1], training=True)  # unannotated write
    owner.flush()
    assert torch.equal(owner.node.published["secret"].value, SECRET)


def test_worker_accepts_a_strict_policy_at_creation():
    worker = sy.VirtualWorker("duet-like", release="strict")
    assert worker.node.release is Release.STRICT
    assert sy.VirtualWorker("tutorial").node.release is Release.OPEN
    with pytest.raises(ValueError, match="choose one of open, training, strict"):
        sy.VirtualWorker("typo", release="closed")


# ---- the desk itself: caps, snapshots, release, constraints ---------------------------------


def _desk(**caps) -> Requests:
    return Requests(show=lambda _: None, **caps)


def _file(desk: Requests, value, obj_id: int = 1, name: str = "n", client: str = "c", **kw):
    return desk.submit(client, obj_id, name, "why", ("mnist",), "", value, **kw)


def test_a_client_keeps_at_most_its_cap_of_requests_waiting():
    desk = _desk(max_pending_per_client=3)
    filed = [_file(desk, i, obj_id=i) for i in range(3)]
    with pytest.raises(LimitError, match="3 requests of this client already wait"):
        _file(desk, 3, obj_id=3)
    assert _file(desk, 0, obj_id=0, client="other").status == "pending"  # per client
    filed[0].deny()  # an answer frees a place
    assert _file(desk, 3, obj_id=3).status == "pending"
    with pytest.raises(LimitError):
        _file(desk, 4, obj_id=4)
    assert len(desk) == 4 and [e["decision"] for e in desk.audit] == ["denied"]


def test_one_waiting_request_per_client_and_object():
    desk = _desk(max_pending_per_client=1)
    first = _file(desk, torch.ones(2), name="first")
    assert _file(desk, torch.zeros(2), name="second") is first  # the waiting one, not a new one
    assert len(desk) == 1 and first.name == "first"
    first.accept()
    second = _file(desk, torch.zeros(2), name="second")  # a new one once it is answered
    assert second is not first and second.status == "pending"


def test_a_request_holds_a_copy_and_its_digest():
    weights = torch.arange(6.0).reshape(2, 3).requires_grad_()
    value = {"w": weights, "steps": [3, 2.5]}
    desk = _desk()
    request = _file(desk, value, provenance="torch.Tensor.sum(published['x'])")
    with torch.no_grad():
        weights.add_(100)  # what the object holds later is not what the owner sees
    value["steps"].append(7)
    snapshot = request.snapshot
    assert torch.equal(snapshot["w"], torch.arange(6.0).reshape(2, 3))
    assert snapshot["w"].requires_grad and snapshot["steps"] == [3, 2.5]
    assert request.digest == digest({"w": torch.arange(6.0).reshape(2, 3), "steps": [3, 2.5]})
    assert request.digest != digest({"w": torch.arange(6.0).reshape(3, 2), "steps": [3, 2.5]})
    assert request.digest != digest({"w": torch.arange(6.0).reshape(2, 3), "steps": [3, 2]})
    assert digest(torch.tensor([1], dtype=torch.int32)) != digest(torch.tensor([1]))
    assert (request.kind, request.dtype, request.shape, request.elements) == (
        "dict",
        "float, float32, int, str",
        "2 items",
        len("w") + 6 + len("steps") + 2,  # a dict's keys count: they are data too
    )
    shown = repr(request)
    for fact in ("dict", "float32", "14 elements", request.digest[:12], "published['x']"):
        assert fact in shown
    assert repr(request) in repr(desk)
    request.deny()
    entry = desk.audit[-1]
    assert (entry["digest"], entry["provenance"]) == (request.digest, request.provenance)
    assert request.value is None  # a denied request's copy is dropped


def test_an_accepted_request_releases_its_snapshot_once():
    desk = _desk(max_snapshot_bytes=120)
    secret = torch.zeros(20)  # 80 bytes
    request = _file(desk, secret)
    with pytest.raises(LimitError, match="more than 120 bytes"):
        _file(desk, torch.zeros(20), obj_id=2)  # both copies would not fit
    with pytest.raises(ValueError, match="was pending: nothing to release"):
        request.release()
    request.accept()
    secret.fill_(1)
    assert request.releasable
    assert torch.equal(request.release(), torch.zeros(20))  # what the owner saw
    assert not request.releasable and request.released
    with pytest.raises(ValueError, match="was released already"):
        request.release()
    assert _file(desk, torch.zeros(20), obj_id=2).status == "pending"  # its bytes were freed
    denied = _file(desk, 1.5, obj_id=3)
    denied.deny()
    with pytest.raises(ValueError, match="was denied"):
        denied.release()
    kept = _file(desk, torch.ones(1), obj_id=4)
    kept.accept()
    newer = _file(desk, torch.ones(1), obj_id=4)  # the node files anew once one was spent
    with pytest.raises(ValueError, match="gave way to a newer one"):
        kept.release()
    assert newer.status == "pending"


def test_a_request_does_not_keep_long_texts():
    with pytest.raises(LimitError, match="at most 256 characters"):
        _file(_desk(), 1, name="n" * 257)
    with pytest.raises(LimitError, match="reason"):
        _desk().submit("c", 1, "n", "r" * 5000, (), "", 1)


@pytest.mark.parametrize(
    ("constraint", "fits", "does_not_fit"),
    [
        ({"max_elements": 1}, 60000, torch.zeros(2)),
        ({"max_elements": 3}, [1, 2, 3], "four"),
        ({"dtype": int}, 60000, True),  # a bool is not an int here
        ({"dtype": int}, [1, 2], torch.tensor(1)),  # nor is a tensor
        ({"dtype": torch.float32}, [torch.zeros(2), torch.ones(1)], torch.zeros(2).double()),
        ({"dtype": bool}, False, 0),
        ({"provenance": "builtins.len(published['x'])"}, 3, 3),  # see provenance_of below
        ({"provenance": lambda p: p.startswith("builtins.len(")}, 3, 3),
        ({"predicate": lambda v: v < 10}, 3, 12),
        ({"predicate": lambda v: v.sum() < 10}, torch.ones(3), torch.ones(30)),  # tensor(True)
        ({"predicate": lambda v: v.startswith("a")}, "abc", 12),  # raising: does not hold
    ],
)
@pytest.mark.parametrize("action", ["accept", "deny"])
def test_a_handler_applies_only_where_its_constraints_hold(constraint, fits, does_not_fit, action):
    """A constraint that fails never denies: the request waits for the owner."""
    desk = _desk()
    handler = desk.add_handler(name="train_size", action=action, **constraint)
    provenance_of = {True: "builtins.len(published['x'])", False: "torch.sum(published['x'])"}
    good = _file(desk, fits, obj_id=1, name="train_size", provenance=provenance_of[True])
    assert good.status == ("accepted" if action == "accept" else "denied")
    assert good.handler is handler and good.decided_by == "handler train_size"
    bad = _file(desk, does_not_fit, obj_id=2, name="train_size", provenance=provenance_of[False])
    assert bad.status == "pending" and bad.snapshot is not None
    assert [r.id for r in desk] == [bad.id]
    bad.accept()  # the owner still answers it


def test_a_constrained_handler_beats_an_unconstrained_one_where_it_holds():
    desk = _desk()
    desk.add_handler(name="train_size", action="accept", max_elements=1, dtype=int)
    desk.add_handler(name="train_size", action="deny")  # newer, but less specific
    assert _file(desk, 60000, name="train_size").status == "accepted"
    assert _file(desk, torch.zeros(3), obj_id=2, name="train_size").status == "denied"


def test_a_late_constrained_handler_answers_only_the_waiting_requests_it_fits():
    desk = _desk()
    size = _file(desk, 60000, obj_id=1, name="train_size")
    data = _file(desk, SECRET.clone(), obj_id=2, name="train_size")
    desk.add_handler(name="train_size", action="accept", max_elements=1, dtype=int)
    assert (size.status, data.status) == ("accepted", "pending")


def test_handler_constraints_are_checked_when_added():
    desk = _desk()
    with pytest.raises(TypeError, match="max_elements"):
        desk.add_handler(name="n", max_elements=-1)
    with pytest.raises(TypeError, match="dtype"):
        desk.add_handler(name="n", dtype="int")
    with pytest.raises(TypeError, match="provenance"):
        desk.add_handler(name="n", provenance=3)
    with pytest.raises(TypeError, match="predicate"):
        desk.add_handler(name="n", predicate="x > 1")


def test_an_unconstrained_accept_handler_warns_once(caplog):
    desk = _desk()
    with caplog.at_level(logging.WARNING, logger="tether.node.requests"):
        desk.add_handler(name="loss", action="deny")
        desk.add_handler(name="train_size", action="accept", max_elements=1, dtype=int)
        assert not caplog.records  # denying, or saying what it accepts, warns of nothing
        desk.add_handler(name="train_size", action="accept")
        desk.add_handler(name="model", action="accept")
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING and "\n" not in warning.getMessage()
    assert "'train_size' has no constraints" in warning.getMessage()
    request = _file(desk, SECRET.clone(), name="train_size")
    assert request.status == "accepted"  # still the owner's choice: it accepts by name
    assert "an unconstrained handler" in repr(request)


def test_a_watcher_hears_every_change_on_the_desk():
    """`Requests.watch` (what the owner's dashboard listens with): filed, decided by the owner
    or a handler, released, handlers added or cleared, a note; and nothing after `stop()`."""
    desk = Requests(max_pending_per_client=8)
    heard: list[tuple[int, list[str]]] = []

    def changed() -> None:  # runs outside the desk's lock: the desk can be read from here
        heard.append((len(desk.audit), [r.status for r in desk.pending()]))

    stop = desk.watch(changed)
    first = desk.submit("c", 1, "a", "", (), "", torch.ones(2))
    assert heard[-1] == (0, ["pending"])
    first.accept()
    assert heard[-1] == (1, [])
    first.release()
    desk.add_handler(name="b", action="deny")
    desk.submit("c", 2, "b", "", (), "", torch.ones(2))  # filed, then denied by the handler
    assert heard[-1] == (2, [])
    desk.clear_handlers()
    desk.note("c", "privacy budget", "ε ≤ 1", "granted")
    assert len(heard) == 8
    stop()
    desk.submit("c", 3, "c", "", (), "", torch.ones(2))
    assert len(heard) == 8
