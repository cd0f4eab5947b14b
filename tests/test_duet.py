"""Duet: an owner and a scientist meeting through `tether network` (a real service and real
websocket servers on 127.0.0.1), directly, relayed, or on one machine by loopback. Nothing the
owner holds or derives reaches the scientist without an accepted request; handlers, timeouts
and the audit log; refused strangers; remote training that matches local training exactly;
and the tutorial's scripts as three processes."""

from __future__ import annotations

import asyncio
import builtins
import copy
import ctypes
import importlib.util
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import Replies, join, leaked, private_values, wait_until

import tether as sy
from tether import datasets, errors, transforms
from tether.datasets import BaseDataset
from tether.duet.rendezvous import Rendezvous, lookup
from tether.duet.session import SessionError, await_scientist, start_duet
from tether.remote.client import Client
from tether.transports.websocket import AccessDeniedError, WebsocketTransport
from tether.wire import Call, Put, Ref

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "duet_mnist"
# Distinctive numbers: any of them (or a sum or mean of them) in a value or a text the
# scientist receives is a leak; `leaked` compares numbers, however they were written.
SECRET = torch.tensor([[271828.0, 314159.0], [161803.0, 141421.0], [173205.0, 223606.0]])
PRIVATE = private_values(SECRET)
LABELS = torch.tensor([1, 0, 1])
ANSWER = 5.0  # seconds to wait for an answer a handler gives at once: a broken desk fails


class ServiceThread:
    """`tether network`'s service on a background event loop."""

    def __init__(self) -> None:
        self.service = Rendezvous(port=0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Rendezvous:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result()
        return self.service

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        join(self.thread, 30)


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    with ServiceThread() as service:
        yield service.url


def _publish(owner: sy.duet.OwnerDuet) -> None:
    SECRET.send(owner, pointable=True, tags=["secret"], description="three private rows")
    BaseDataset(SECRET, LABELS).send(
        owner, pointable=True, tags=["rows"], description="the rows and their labels"
    )


@pytest.fixture(params=["direct", "relay"])
def pair(request, network) -> Iterator[tuple[sy.duet.OwnerDuet, sy.duet.ScientistDuet]]:
    """An owner publishing SECRET (as a tensor and as a dataset) and its joined scientist."""
    owner = start_duet(network, confirm=False)
    try:
        _publish(owner)
        scientist = sy.join_duet(
            owner.session_id, network, relay=request.param == "relay", timeout=10
        )
        yield owner, scientist
        scientist.close()
    finally:
        owner.close()


class Net(sy.Module):
    def __init__(self, torch_ref) -> None:
        super().__init__(torch_ref=torch_ref)
        self.fc = self.torch_ref.nn.Linear(2, 2)
        self.dropout = self.torch_ref.nn.Dropout(0.25)

    def forward(self, x):
        return self.torch_ref.nn.functional.log_softmax(self.dropout(self.fc(x)), dim=1)


# ---- no leaks -------------------------------------------------------------------------------


def test_nothing_private_reaches_the_scientist_without_a_request(pair):
    owner, duet = pair
    replies = Replies(duet.client)
    x, rows = duet.store["secret"], duet.store["rows"]
    model = Net(torch).send(duet)
    output = model(x / 1e6)
    loss = F.nll_loss(output, torch.tensor([1, 0, 1]))
    loss.backward()
    owner.requests.add_handler(name="train_size", action="accept")  # the one thing released
    rows.len().get(request_block=True, name="train_size", timeout_secs=ANSWER)
    batch = next(iter(duet.torch.utils.data.DataLoader(rows, batch_size=3, shuffle=True)))
    attempts = {
        "dataset tensor": x,
        "x + 0": x + 0,
        "clone": x.clone(),
        "sum": x.sum(),
        "x[0]": x[0],
        "model output": output,
        "loss": loss,
        "loss.item()": loss.item(),
        "weight.grad": model.fc.weight.grad,
        "trained weight": model.fc.weight,
        "a batch": batch[0],
        "its labels": batch[1],
    }
    for what, pointer in attempts.items():
        with pytest.raises(errors.RequestPendingError, match="waits for the owner's answer"):
            pointer.get()
        assert pointer.get(request_block=True, name=what, timeout_secs=0.01) is None, what
        assert not leaked([repr(pointer), str(pointer)], PRIVATE), what
    with pytest.raises(errors.RemoteError) as refused:
        rows.get()  # a dataset never leaves as data
    assert not leaked(refused.value, PRIVATE)
    # shapes do not match: the failure is not reported (its text and the bit are the data's);
    # the result is poisoned and held back like any other
    with pytest.raises(errors.RequestPendingError) as failure:
        (x @ torch.ones(3, 3)).get()
    assert not leaked(failure.value, PRIVATE)
    assert len(replies.received) > 2 * len(attempts)
    assert not leaked(replies.received, PRIVATE)  # not in any value, meta or error text
    decisions = [r["decision"] for r in owner.requests.audit]
    assert decisions == ["accepted"] + ["timed out"] * len(attempts)


def test_the_store_shows_only_what_the_owner_wrote_and_no_sizes(pair):
    owner, duet = pair
    assert len(owner.store) == len(duet.store) == 2
    assert torch.equal(owner.store["secret"], SECRET)  # the owner's own view: the object
    assert owner.store.pandas.equals(duet.store.pandas)
    with pytest.raises(TypeError, match="expected a worker"):
        BaseDataset(SECRET, LABELS).send(object())
    assert list(duet.store.pandas.columns) == ["id", "tags", "description"]
    assert [(e["tags"], e["description"]) for e in duet.store.catalog()] == [
        (["secret"], "three private rows"),
        (["rows"], "the rows and their labels"),
    ]
    assert all(set(e) == {"id", "tags", "description"} for e in duet.store.catalog())
    x, rows = duet.store[0], duet.store[duet.store.catalog()[1]["id"]]
    assert "[private shape]" in repr(x)
    with pytest.raises(errors.PermissionDeniedError, match=r"shape and dtype .* are private"):
        x.shape  # noqa: B018
    with pytest.raises(errors.PermissionDeniedError):
        (x + 0).shape  # noqa: B018
    with pytest.raises(TypeError, match=r"length .* is private"):
        len(rows)
    with pytest.raises(KeyError, match="no object in the store has id or tag 'nope'"):
        duet.store["nope"]
    out = duet.client.new_id()  # a frame that replaces a derived result at once
    replies = duet.client.transport.exchange(
        [Call("operator.add", [Ref(x.id), 0], {}, out), Put(out, 1.0)]
    )()
    assert replies[0].meta is None  # nothing is said of what is computed from the data
    pieces = duet.client.call_each("torch.Tensor.split", [Ref(x.id), 1], None, len(SECRET))
    with pytest.raises(errors.PermissionDeniedError, match=r"shape and dtype .* are private"):
        pieces[0].shape  # noqa: B018  (each result of a multi-out call is described alike)


def test_an_accepted_request_releases_exactly_that_object_once(pair):
    owner, duet = pair
    replies = Replies(duet.client)
    x = duet.store["secret"]
    total, other = x.sum(), x.mean()
    assert total.request(name="total", reason="a sum is fine") == "pending"
    [request] = list(owner.requests)
    assert (request.name, request.reason, request.client) == (
        "total",
        "a sum is fine",
        duet.client_id,
    )
    request.accept()
    assert total.get(delete=False).item() == SECRET.sum().item()
    with pytest.raises(errors.RequestPendingError):
        total.get()  # released once
    with pytest.raises(errors.RequestPendingError):
        other.get()  # and nothing else
    assert [(e["name"], e["decision"], e["by"]) for e in owner.requests.audit] == [
        ("total", "accepted", "owner")
    ]
    assert leaked(replies.received, PRIVATE) == [SECRET.sum().item()]  # the one value released


def test_a_waiting_get_is_answered_by_a_push_and_blocks_no_other_client(pair, network):
    owner, duet = pair
    total = duet.store["secret"].sum()
    got: queue.Queue = queue.Queue()
    waiter = threading.Thread(
        target=lambda: got.put(
            total.get(request_block=True, name="sum", reason="to plot", timeout_secs=10)
        ),
        daemon=True,
    )
    waiter.start()
    wait_until(lambda: list(owner.requests), 10, "the scientist's request")
    stranger = Client(None, WebsocketTransport(owner.server.url, owner.session_id[16:]))
    with pytest.raises(errors.PermissionDeniedError, match="not a confirmed scientist"):
        stranger.call("torch.zeros", [2])
        stranger.flush()  # answered while the scientist's get still waits
    stranger.close()
    assert got.empty()
    owner.requests[0].accept()
    join(waiter, 10)
    assert got.get_nowait().item() == SECRET.sum().item()


# ---- handlers -------------------------------------------------------------------------------


def test_handlers_by_name_and_tag_and_which_one_wins(pair, capsys):
    owner, duet = pair
    x = duet.store["secret"]
    desk = owner.requests
    desk.add_handler(name="loss", action="deny", print_local=True)
    desk.add_handler(tags=["secret"], action="accept")
    assert (
        x.sum().get(request_block=True, name="loss", timeout_secs=ANSWER) is None
    )  # a name beats a tag
    assert "deny — the value is" in capsys.readouterr().out  # the owner saw what it denied
    assert (
        x.max().get(request_block=True, name="anything", timeout_secs=ANSWER).item() == 314159.0
    )  # tag matched
    desk.add_handler(name="loss", tags=["secret"], action="accept")  # name and tag beat name
    assert x.min().get(request_block=True, name="loss", timeout_secs=ANSWER).item() == 141421.0
    desk.add_handler(name="loss", tags=["secret"], action="deny")  # as specific: newest wins
    assert x.min().get(request_block=True, name="loss", timeout_secs=ANSWER) is None
    assert [(e["name"], e["decision"], e["client"]) for e in desk.audit] == [
        ("loss", "denied", duet.client_id),
        ("anything", "accepted", duet.client_id),
        ("loss", "accepted", duet.client_id),
        ("loss", "denied", duet.client_id),
    ]


def test_handlers_expire_requests_time_out_and_late_handlers_answer_waiting_requests(pair):
    owner, duet = pair
    x = duet.store["secret"]
    owner.requests.add_handler(name="soon", action="accept", timeout_secs=0.01)
    time.sleep(0.05)
    total = x.sum()
    assert total.request(name="soon", reason="the handler has expired") == "pending"
    [request] = list(owner.requests)
    assert total.get(request_block=True, name="soon", timeout_secs=0.05) is None
    assert request.status == owner.requests.audit[-1]["decision"] == "timed out"
    with pytest.raises(ValueError, match="already timed out"):
        request.accept()  # a timeout is a decision too: a late answer changes nothing
    late = x.sum()
    assert late.request(name="late", reason="filed before any handler") == "pending"
    owner.requests.add_handler(name="late", action="accept")
    assert late.get().item() == SECRET.sum().item()
    assert owner.requests.audit[-1]["by"] == "handler late"


def test_the_owners_machine_is_the_owners_data(pair):
    owner, duet = pair
    has_cuda = duet.torch.cuda.is_available()
    assert has_cuda.get(request_block=True, name="cuda_is_available", timeout_secs=0.01) is None
    owner.requests.add_handler(name="cuda_is_available", action="accept")
    assert (
        duet.torch.cuda.is_available().get(
            request_block=True, name="cuda_is_available", timeout_secs=ANSWER
        )
        is torch.cuda.is_available()
    )


# ---- who may connect --------------------------------------------------------------------------


def test_strangers_and_unconfirmed_scientists_are_refused(network):
    with start_duet(network, confirm=True) as owner:
        with pytest.raises(AccessDeniedError):  # the session id's secret is the token
            WebsocketTransport(owner.server.url, "not-the-secret")
        wrong = owner.session_id[:16] + "a" * 32  # the service checks its relay key
        with pytest.raises(errors.ConnectionLostError, match="no duet with this session id"):
            sy.join_duet(wrong, network, timeout=5)
        with pytest.raises(errors.ConnectionLostError, match="404"):
            sy.join_duet(wrong, network, relay=True, timeout=5)
        with pytest.raises(errors.PermissionDeniedError, match="did not confirm"):
            sy.join_duet(owner.session_id, network, timeout=0.2)  # the owner never confirms
        unconfirmed = Client(None, WebsocketTransport(owner.server.url, owner.session_id[16:]))
        unconfirmed.call("tether.published", ["anything"], kind="object")
        with pytest.raises(errors.PermissionDeniedError, match="not a confirmed scientist"):
            unconfirmed.flush()
        unconfirmed.close()
        assert owner.client_id is None and not owner.requests.audit


def test_the_owner_confirms_the_client_id_the_scientist_printed(network, monkeypatch):
    owner = start_duet(network, confirm=True)
    typed = iter(["not-it", "0123456789abcdef"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(typed))
    confirming = threading.Thread(target=await_scientist, args=(owner, True, 10), daemon=True)
    confirming.start()
    monkeypatch.setattr("tether.duet.session.secrets.token_hex", lambda n: "0123456789abcdef")
    with sy.join_duet(owner.session_id, network, timeout=10) as duet:
        monkeypatch.undo()
        join(confirming, 20)
        assert owner.client_id == duet.client_id == "0123456789abcdef"
        assert torch.equal(torch.ones(2).send(duet).get(), torch.ones(2))
        second = pytest.raises(errors.PermissionDeniedError, match="already has its scientist")
        with second:
            sy.join_duet(owner.session_id, network, timeout=5)
    assert owner.wait(10)  # the scientist left
    owner.close()


def test_confirmation_fails_clearly_without_a_match_or_a_scientist(network, monkeypatch):
    with start_duet(network, confirm=True) as owner:
        with pytest.raises(SessionError, match="no scientist joined within"):
            await_scientist(owner, True, 0.01)
        refused: queue.Queue = queue.Queue()

        def join_and_keep_the_error() -> None:
            try:
                sy.join_duet(owner.session_id, network, timeout=30)
            except errors.TetherError as exc:
                refused.put(exc)

        joining = threading.Thread(target=join_and_keep_the_error, daemon=True)
        joining.start()
        monkeypatch.setattr(builtins, "input", lambda prompt="": "wrong")
        with pytest.raises(SessionError, match="matched the client id after 3 tries"):
            await_scientist(owner, True, 10)
        owner.close()  # the waiting scientist is told at once, not after its 30 s
        join(joining, 10)
        told = refused.get_nowait()
        assert isinstance(told, errors.ConnectionLostError)
        assert "1001: worker shutting down" in str(told)


def test_the_service_names_what_is_missing(network):
    with pytest.raises(errors.ConnectionLostError, match="no duet with this session id"):
        lookup(network, "a" * 16, "0" * 64)
    with pytest.raises(errors.TetherError, match="404"):
        sy.join_duet("a" * 48, network, relay=True, timeout=5)
    with pytest.raises(ValueError, match="not a duet session id"):
        sy.join_duet("xyxyxyxy", network)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(errors.ConnectionLostError, match="start one with `tether network`"):
        start_duet(f"ws://127.0.0.1:{port}")


def test_loopback_needs_no_service():
    owner = start_duet(loopback=True, confirm=False)
    try:
        _publish(owner)
        with sy.join_duet(loopback=True, timeout=10) as duet:
            assert (duet.store["secret"] + 0).get(request_block=True, timeout_secs=0.01) is None
    finally:
        owner.close()


# ---- remote data science --------------------------------------------------------------------


def test_a_loader_needs_the_datasets_length_which_is_a_request(pair):
    owner, duet = pair
    rows = duet.store["rows"]
    loader = duet.torch.utils.data.DataLoader(rows, batch_size=2, shuffle=True)
    with pytest.raises(TypeError, match="request it first"):
        list(loader)
    owner.requests.add_handler(name="train_size", action="accept")
    assert (
        rows.len().get(request_block=True, name="train_size", timeout_secs=ANSWER) == 3 == len(rows)
    )
    assert len(loader) == 2
    batches = list(loader)
    assert [b[0].kind for b in batches] == ["tensor", "tensor"]
    owner.requests.add_handler(tags=["rows"], action="accept")
    seen = sorted(
        v for b in batches for v in b[1].get(request_block=True, timeout_secs=ANSWER).tolist()
    )
    assert seen == sorted(LABELS.tolist())


def test_remote_python_values_and_torch_paths(pair):
    _, duet = pair
    total = duet.python.Float(1.5)
    total += duet.python.Int(2)
    assert total.get() == 3.5
    assert duet.python.List([1, 2]).get() == [1, 2]
    assert duet.python.Dict({"a": 1}).get() == {"a": 1}
    assert duet.torch.ones(2).get().tolist() == [1.0, 1.0]
    with pytest.raises(AttributeError, match=r"torch\.load is not in tether's allowlist"):
        duet.torch.load  # noqa: B018
    with pytest.raises(AttributeError, match=r"torch\.os is not"):
        duet.torch.os.system  # noqa: B018
    derived = duet.python.Float(0)
    derived += duet.store["secret"].sum().item()  # a remote float computed from the data
    assert derived.get(request_block=True, timeout_secs=0.01) is None


def test_training_through_the_duet_equals_training_locally(pair):
    """sy.Module, remote_torch.optim, StepLR, a shuffled remote loader and manual_seed: the
    same seed and the same batch order give the same weights, bit for bit."""
    owner, duet = pair
    owner.requests.add_handler(name="train_size", action="accept")
    owner.requests.add_handler(name="model", action="accept")
    torch.manual_seed(0)
    local_model = Net(torch)
    baseline = copy.deepcopy(local_model)
    remote_model = local_model.send(duet)
    assert local_model.is_local and not remote_model.is_local
    rows = duet.store["rows"]
    rows.len().get(request_block=True, name="train_size", timeout_secs=ANSWER)
    remote_torch = duet.torch
    remote_torch.manual_seed(7)
    optimizer = remote_torch.optim.Adadelta(remote_model.parameters(), lr=1.0)
    scheduler = remote_torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    loader = remote_torch.utils.data.DataLoader(rows, batch_size=2, shuffle=True)
    for _ in range(2):
        remote_model.train()
        for data, target in loader:
            optimizer.zero_grad()
            remote_torch.nn.functional.nll_loss(remote_model(data / 1e6), target).backward()
            optimizer.step()
        scheduler.step()
    trained = remote_model.get(request_block=True, name="model", timeout_secs=10)

    torch.manual_seed(7)
    optimizer = torch.optim.Adadelta(baseline.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    local_loader = torch.utils.data.DataLoader(
        BaseDataset(SECRET, LABELS), batch_size=2, shuffle=True
    )
    for _ in range(2):
        baseline.train()
        for data, target in local_loader:
            optimizer.zero_grad()
            F.nll_loss(baseline(data / 1e6), target).backward()
            optimizer.step()
        scheduler.step()
    assert trained.is_local and not remote_model.is_local  # it can keep training
    for (name, got), (_, want) in zip(
        trained.state_dict().items(), baseline.state_dict().items(), strict=True
    ):
        assert torch.equal(got, want), name


def test_a_denied_model_stays_remote(pair):
    owner, duet = pair
    remote_model = Net(torch).send(duet)
    with pytest.raises(ValueError, match="remote already"):
        remote_model.send(duet)
    remote_model(duet.store["secret"]).sum().backward()
    owner.requests.add_handler(name="model", action="deny")
    assert remote_model.get(request_block=True, name="model", timeout_secs=5) is None
    assert [e["decision"] for e in owner.requests.audit] == ["denied"]  # one request for all


# ---- the tutorial, as three processes -------------------------------------------------------


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Process:
    """A child process whose output lines are collected as they come."""

    def __init__(self, *args: str, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_die_with_parent,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """The first group of the first line matching `pattern` (waiting for it)."""
        regex = re.compile(pattern)

        def found() -> re.Match | None:
            return next(filter(None, map(regex.search, self.lines)), None)

        with self._changed:
            if not self._changed.wait_for(found, timeout):
                raise AssertionError(f"no line matches {pattern!r}:\n" + self.output)
            return found().group(1)  # type: ignore[union-attr]

    def finish(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


TUTORIAL_ARGS = ("--limit", "10", "--test-limit", "1")  # 10 batches of 64, 1000 test images


def _the_tutorial_in_plain_pytorch() -> float:
    """The scientist's training (scientist.py with TUTORIAL_ARGS) on the owner's data, in
    plain PyTorch in this process: the test accuracy, in percent."""
    spec = importlib.util.spec_from_file_location("duet_scientist", EXAMPLES / "scientist.py")
    scientist = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scientist)  # type: ignore[union-attr]
    _, args = scientist.tutorial_args(list(TUTORIAL_ARGS))
    normalized = transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.1307, 0.3081)])
    train_data = datasets.MNIST(args["data"], train=True, transform=normalized)
    test_data = datasets.MNIST(args["data"], train=False, transform=normalized)
    torch.manual_seed(args["seed"])
    model = scientist.SyNet(torch)
    torch.manual_seed(args["seed"])  # as the scientist seeds the owner's torch
    optimizer = torch.optim.Adadelta(model.parameters(), lr=args["lr"])
    loader = torch.utils.data.DataLoader(train_data, batch_size=args["batch_size"], shuffle=True)
    model.train()
    for batch, (data, target) in enumerate(loader):
        optimizer.zero_grad()
        F.nll_loss(model(data), target).backward()
        optimizer.step()
        if batch + 1 >= args["limit"]:
            break
    model.eval()
    images, labels = next(iter(torch.utils.data.DataLoader(test_data, args["test_batch_size"])))
    with torch.no_grad():
        correct = (model(images).argmax(dim=1) == labels).sum().item()
    return 100 * correct / len(labels)


def test_the_tutorial_runs_as_owner_and_scientist_processes_through_tether_network():
    service = Process("-m", "tether.cli", "network", "--port", "0", "--quiet")
    owner = scientist = None
    try:
        url = service.expect(r"listening on (ws://\S+)")
        owner = Process(str(EXAMPLES / "owner.py"), "--network", url, stdin=True)
        session_id = owner.expect(r"session id: (\w+)")
        scientist = Process(
            str(EXAMPLES / "scientist.py"),
            session_id,
            "--network",
            url,
            *TUTORIAL_ARGS,
        )
        client_id = scientist.expect(r"your client id: (\w+)")
        owner.proc.stdin.write(client_id + "\n")  # type: ignore[union-attr]
        owner.proc.stdin.flush()  # type: ignore[union-attr]
        assert scientist.finish(120) == 0, scientist.output
        assert owner.finish(30) == 0, owner.output
    finally:
        for process in (scientist, owner, service):
            if process is not None and process.proc.poll() is None:
                process.proc.kill()
    out = scientist.output
    assert "Data Owner has CUDA: False" in out
    assert "Training Dataset size is: 5000" in out
    assert "Train Epoch: 1 0 ?" in out  # the loss was denied...
    assert re.search(r"deny — the value is \d", owner.output)  # ...and shown to the owner
    accuracy = float(re.search(r"Test Set Accuracy: ([\d.]+)%", out).group(1))
    # the same seed, data and batch order in plain PyTorch: the same model, so the same
    # accuracy (to a few of the 1000 test images: the processes' float sums may differ);
    # after 10 batches it is far above chance (10%), so a model that did not train fails
    local = _the_tutorial_in_plain_pytorch()
    assert accuracy == pytest.approx(local, abs=0.5), (accuracy, local)
    assert accuracy > 30, accuracy
    decisions = re.findall(
        r"(cuda_is_available|train_size|loss|model) .* (accepted|denied)", owner.output
    )
    assert decisions == [
        ("cuda_is_available", "accepted"),
        ("train_size", "accepted"),
        ("loss", "denied"),
        ("model", "accepted"),
    ]
