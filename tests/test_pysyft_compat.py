"""PySyft 0.2 semantics the tutorials rely on (issue 23): queued work runs under the torch state
it was issued in, `.get()` and `send` carry `.grad` (and a `.grad` computed from private data
does not leave a training or strict node), pointer chains among workers in this process, and
the PySyft names a new user meets (or an error naming the tether way)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch
from conftest import TOKEN, WorkerProcess
from torch import nn, optim
from websockets.sync.client import connect as ws_connect

import tether as sy
from tether import errors
from tether.wire import Call, Get, Put, decode, encode

SAMPLES = 32
ARGS = ("--dataset", "mnist", "--labels", "0-3", "--samples", str(SAMPLES), "--quiet")


def _workers(*names: str) -> list[sy.VirtualWorker]:
    hook = sy.TorchHook(torch)
    return [sy.VirtualWorker(hook, id=name) for name in names]


# ---- 1. the torch state a command was issued in ------------------------------------------------


def _linear_step(model: nn.Module, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    opt = optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss = ((model(data) - target) ** 2).sum()
    loss.backward()
    opt.step()
    return loss


def _grad_mode_as_issued(worker: sy.Worker) -> None:
    """Part 10's averaging: a forward and backward issued normally, then `model.get()` under
    no_grad, which flushes them. They run with grad on, as eagerly."""
    data, target = torch.tensor([[0, 0], [0, 1], [1, 1.0]]), torch.tensor([[0], [1], [1.0]])
    torch.manual_seed(0)
    model, eager = nn.Linear(2, 1), nn.Linear(2, 1)
    eager.load_state_dict(model.state_dict())
    model.send(worker)
    loss = _linear_step(model, data.send(worker), target.send(worker))
    with torch.no_grad():
        model.get()
        remote_loss = loss.get()
    eager_loss = _linear_step(eager, data, target)
    assert torch.equal(remote_loss.detach(), eager_loss.detach())
    assert remote_loss.requires_grad  # made with grad on, as issued
    for remote, local in zip(model.parameters(), eager.parameters(), strict=True):
        assert torch.equal(remote, local)
    # and the other way round: issued under no_grad, flushed with grad on
    w = torch.ones(2, requires_grad=True).send(worker)
    with torch.no_grad():
        doubled = w * 2
    assert not doubled.requires_grad  # as the worker describes it
    assert not doubled.get().requires_grad


def _inference_mode_and_default_dtype_as_issued(worker: sy.Worker) -> None:
    w = torch.ones(2, requires_grad=True).send(worker)
    ints = torch.arange(3).send(worker)
    torch.set_default_dtype(torch.float64)
    try:
        halves = ints * 0.5  # an int tensor times a float: the default dtype decides
    finally:
        torch.set_default_dtype(torch.float32)
    y = w * 3  # issued with grad on, outside inference mode
    with torch.inference_mode():
        worker.flush()
    assert halves.get().dtype == torch.float64 == (torch.arange(3, dtype=torch.float64) * 0.5).dtype
    assert (ints * 0.5).get().dtype == torch.float32  # the worker's default dtype is set back
    with torch.inference_mode():
        made = w * 2
    assert not made.get().requires_grad
    y.sum().backward()  # an inference tensor could not be backwarded through
    assert torch.equal(w.get().grad, torch.full((2,), 3.0))


def test_queued_work_runs_under_the_grad_mode_it_was_issued_in() -> None:
    _grad_mode_as_issued(*_workers("bob"))


def test_queued_work_runs_under_the_inference_mode_and_default_dtype_it_was_issued_in() -> None:
    _inference_mode_and_default_dtype_as_issued(*_workers("bob"))


def test_a_network_worker_runs_queued_work_under_the_state_it_was_issued_in(training) -> None:
    """The same over the network: each command carries its state (`Call.state`) to the
    `tether worker` process, which runs it under that state and then sets itself back."""
    with training.connect() as worker:
        _grad_mode_as_issued(worker)
        _inference_mode_and_default_dtype_as_issued(worker)
        assert (torch.ones(2, requires_grad=True).send(worker) * 2).get().requires_grad


def _raw_connection(process: WorkerProcess):
    return ws_connect(
        process.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, compression=None
    )


def test_one_clients_default_dtype_never_reaches_another(training) -> None:
    """torch's default dtype is one per process: while one client's commands run under
    float64, another's run under float32 at the same time, on the worker's threads and on its
    event loop (the node keeps them apart: tether.node.state)."""
    float64 = 1 << 2  # the state code of grad on, float64 (tether.wire.torchstate)
    made: dict[int, set[str]] = {0: set(), float64: set()}

    def issue(state: int) -> None:
        with _raw_connection(training) as ws:
            ws.send(bytes(encode([Put(1, torch.arange(64))])))
            decode(ws.recv())
            for _ in range(40):
                # a factory (run on the connection's thread) and a small int * float (on the
                # loop, when alone in its frame): the default dtype decides both
                for frame in (
                    [Call("torch.ones", [64], {}, 2 + i, 0, state) for i in range(20)],
                    [Call("operator.mul", [1, 0.5], {}, 2, 1, state)],
                ):
                    ws.send(bytes(encode(frame)))
                    made[state].update(done.meta[2] for done in decode(ws.recv()))

    threads = [threading.Thread(target=issue, args=(state,)) for state in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert made == {0: {"float32"}, float64: {"float64"}}


def test_a_bogus_torch_state_gets_an_error_and_the_worker_keeps_serving(training) -> None:
    frame = bytes(encode([Call("torch.ones", [2], {}, 1, 0, 99)]))
    with _raw_connection(training) as ws:
        ws.send(frame)
        (reply,) = decode(ws.recv())
        assert reply.kind == "WireError" and "a torch state code (0 to 15)" in reply.message
        ws.send(bytes(encode([Call("torch.ones", [2], {}, 1, 0, 1 << 2), Get([1])])))
        done, value = decode(ws.recv())
        assert value.value[0].dtype == torch.float64, (done, value)
    with training.connect() as worker:
        assert (torch.arange(2).send(worker) * 0.5).get().dtype == torch.float32


# ---- 2. .grad travels with .get() and send, and is judged as it leaves -------------------------


def test_get_brings_the_grad_and_send_carries_it() -> None:
    (bob,) = _workers("bob")
    x = torch.tensor([1, 2, 3, 4, 5.0], requires_grad=True).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1.0], requires_grad=True).send(bob)
    (x * y * 2).sum().backward()
    x = x.get()
    assert torch.equal(x.grad, torch.full((5,), 2.0))
    x.grad = torch.full((5,), 7.0)
    sent = x.send(bob)
    assert torch.equal(sent.grad.get(), torch.full((5,), 7.0))
    assert torch.equal(sent.get().grad, torch.full((5,), 7.0))
    assert len(bob._objects) == 1  # y only: nothing of the grads' fetching is left behind


def test_a_grad_computed_from_private_data_leaves_an_open_worker() -> None:
    (olive,) = _workers("olive")  # a VirtualWorker is open
    olive.publish("secret", torch.tensor([3.0, 4.0]))
    w = torch.zeros(2, requires_grad=True).send(olive)
    (w * olive.published("secret")).sum().backward()
    assert torch.equal(w.get().grad, torch.tensor([3.0, 4.0]))


@pytest.fixture(scope="module")
def training() -> Iterator[WorkerProcess]:
    process = WorkerProcess("--id", "tina", *ARGS)  # the default policy: training
    yield process
    process.stop()


def _backward_through(worker: sy.Worker, private: bool) -> sy.Pointer:
    """A tensor of the scientist's own, with a .grad from the worker's data or from its own."""
    w = torch.zeros(28 * 28, requires_grad=True).send(worker)
    images = worker.dataset("mnist").data if private else torch.ones(4, 1, 28, 28).send(worker)
    (images.float().flatten(1) @ w).sum().backward()
    return w


def test_a_grad_computed_from_private_data_does_not_leave_a_training_worker(training) -> None:
    with training.connect() as worker:
        w = _backward_through(worker, private=True)
        with pytest.raises(errors.NotAllowedError, match="release policy is 'training'"):
            w.get()
        own = _backward_through(worker, private=False)  # a grad from my own data leaves
        assert torch.equal(own.get().grad, torch.full((28 * 28,), 4.0))


def test_a_grad_computed_from_private_data_is_asked_for_on_a_strict_worker() -> None:
    process = WorkerProcess("--id", "stella", "--policy", "strict", *ARGS)
    try:
        with process.connect() as worker:
            w = _backward_through(worker, private=True)
            with pytest.raises(errors.RequestPendingError):
                w.get()
            own = _backward_through(worker, private=False)
            assert torch.equal(own.get().grad, torch.full((28 * 28,), 4.0))
    finally:
        process.stop()


# ---- 4. pointer chains -----------------------------------------------------------------------


def test_a_pointer_sent_to_a_worker_is_held_there_and_got_back_one_hop_at_a_time() -> None:
    bob, alice = _workers("bob", "alice")
    p2p2x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    assert p2p2x.location is alice
    [held] = alice._objects.values()
    assert isinstance(held, sy.Pointer) and held.location is bob
    assert [torch.equal(t, torch.tensor([1, 2, 3, 4, 5])) for t in bob._objects.values()] == [True]
    y = p2p2x + p2p2x
    assert len(alice._objects) == 2 and len(bob._objects) == 2
    assert torch.equal(y.get().get(), torch.tensor([2, 4, 6, 8, 10]))
    assert torch.equal(p2p2x.get().get(), torch.tensor([1, 2, 3, 4, 5]))
    assert bob._objects == {} and alice._objects == {}
    # remote_get: the data moves one hop, to alice
    chained = torch.tensor([1.0, 2.0]).send(bob).send(alice)
    on_alice = chained.remote_get()
    assert on_alice.location is alice and bob._objects == {}
    assert torch.equal(on_alice.get(), torch.tensor([1.0, 2.0]))


def test_a_pointer_is_not_sent_to_a_network_worker(training) -> None:
    (bob,) = _workers("bob")
    x = torch.ones(2).send(bob)
    with training.connect() as worker:
        with pytest.raises(errors.NotAllowedError, match="connect to other workers on your"):
            x.send(worker)
        assert torch.equal(x.move(worker).get(), torch.ones(2))  # the data moves instead
        assert torch.equal((torch.ones(2).send(worker) + 1).get(), torch.full((2,), 2.0))


# ---- 5. the names a PySyft user meets --------------------------------------------------------


def test_worker_objects_local_worker_and_owner() -> None:
    (bob,) = _workers("bob")
    x_ptr = torch.tensor([1, 2, 3]).send(bob)
    z = x_ptr + x_ptr
    objects = bob._objects
    assert sorted(objects) == sorted([x_ptr.id_at_location, z.id_at_location])
    assert torch.equal(objects[z.id_at_location], torch.tensor([2, 4, 6]))
    assert x_ptr.owner is sy.local_worker and sy.local_worker.id == "me"
    assert bob == x_ptr.location
    assert bob.clear_objects() is bob and bob._objects == {}
    with pytest.raises(errors.ObjectNotFoundError):
        z.get()
    with pytest.raises(TypeError, match="pointer chain"):
        torch.ones(1).send(bob).remote_get()


def test_network_workers_say_why_they_list_no_objects(training) -> None:
    with training.connect() as worker:
        with pytest.raises(AttributeError, match="its store is its owner's"):
            worker._objects  # noqa: B018
        with pytest.raises(AttributeError, match="drop your pointers"):
            worker.clear_objects()


def test_module_copy_and_an_optimizer_made_after_the_send() -> None:
    """Part 4: `model.copy().send(bob)`, then the optimizer on the sent copy's parameters,
    trains as plain PyTorch does."""
    (bob,) = _workers("bob")
    data, target = torch.tensor([[0, 0], [0, 1.0]]), torch.tensor([[0], [1.0]])
    model = nn.Linear(2, 1)
    bobs_model = model.copy().send(bob)
    bobs_opt = optim.SGD(params=bobs_model.parameters(), lr=0.1)
    eager = model.copy()
    eager_opt = optim.SGD(params=eager.parameters(), lr=0.1)
    d, t = data.send(bob), target.send(bob)
    for _ in range(3):
        for m, opt, x, y in ((bobs_model, bobs_opt, d, t), (eager, eager_opt, data, target)):
            opt.zero_grad()
            ((m(x) - y) ** 2).sum().backward()
            opt.step()
    assert torch.equal(bobs_model.get().weight, eager.weight)
    assert not torch.equal(model.weight, eager.weight)  # the copy was independent
    with pytest.raises(errors.NotAllowedError, match="copy it before sending"):
        model.send(bob).copy()
    with pytest.raises(errors.NotAllowedError, match="step it there by hand"):
        optim.SGD([torch.ones(2, requires_grad=True).send(bob)], lr=0.1)


def test_parameters_captured_before_the_send_act_as_pointers_while_it_is_away() -> None:
    """Part 10: `params = list(model.parameters())` before the loop's `model.send(worker)`;
    while the model is away, each is its copy on the worker (`.copy()`, arithmetic, `.get()`,
    in-place changes), and after `model.get()` a local tensor again."""
    (bob,) = _workers("bob")
    data, target = torch.tensor([[0, 0], [0, 1.0]]), torch.tensor([[0], [1.0]])
    model = nn.Linear(2, 1)
    eager = model.copy()
    params = list(model.parameters())
    _linear_step(model.send(bob), data.send(bob), target.send(bob))
    _linear_step(eager, data, target)  # the values the worker's copies hold now
    weight, bias = params
    assert weight.location is bob and isinstance(weight.copy(), sy.Pointer)
    assert torch.equal(weight.copy().get(), eager.weight)  # the trained values, not the local
    assert torch.equal((bias * 2 + weight.sum()).get(), eager.bias * 2 + eager.weight.sum())
    assert torch.equal(torch.add(bias, 1).get(), eager.bias + 1)
    assert weight.shape == (1, 2) and "Pointer" in repr(weight)
    with torch.no_grad():
        for param in params:
            param *= 0  # on the worker, as PySyft's averaging zeroes the workers' models
    model.get()
    assert type(weight) is nn.Parameter and weight is model.weight  # local again
    assert torch.equal(weight, torch.zeros(1, 2)) and torch.equal(bias, torch.zeros(1))
    with torch.no_grad():
        weight.set_(eager.weight.detach().clone())  # Part 10's last step, on local tensors
    assert torch.equal(model.weight, eager.weight)


def test_base_dataset_sent_to_workers_makes_a_federated_dataset() -> None:
    bob, alice = _workers("bob", "alice")
    parts = [
        sy.BaseDataset(torch.arange(8.0).view(4, 2), torch.tensor([0, 1, 0, 1])).send(bob),
        sy.BaseDataset(torch.ones(2, 2), torch.tensor([1, 1])).send(alice),
    ]
    dataset = sy.FederatedDataset(parts)
    assert dataset.workers == ["bob", "alice"] and len(dataset) == 6
    batches = [(d.location.id, t.get().tolist()) for d, t in sy.FederatedDataLoader(dataset, 2)]
    assert batches == [("bob", [0, 1]), ("bob", [0, 1]), ("alice", [1, 1])]
    with pytest.raises(TypeError, match="send each first"):
        sy.FederatedDataset([sy.BaseDataset(torch.ones(2, 2), torch.tensor([1, 1]))])


def test_the_sandbox_and_its_grid(training) -> None:
    """Part 07's first cells: PySyft's sandbox workers and globals, and the grid's search."""
    sandbox: dict = {"torch": torch}
    sy.create_sandbox(sandbox, verbose=False, download_data=False)
    names = ["bob", "theo", "jason", "alice", "andy", "jon"]
    assert [w.id for w in sandbox["workers"]] == names
    assert all(sandbox[name] is w for name, w in zip(names, sandbox["workers"], strict=True))
    assert isinstance(sandbox["hook"], sy.TorchHook)
    assert sandbox["grid"].search("#boston") == {}  # no data asked for, none loaded
    bob, alice = sandbox["bob"], sandbox["alice"]
    bob.publish("a", torch.ones(2), tags=("#x", "#y"))
    bob.publish("b", torch.zeros(3), tags=("#x",))
    alice.publish("c", torch.full((1,), 7.0), tags=("#y", "#x"))
    found = sy.PrivateGridNetwork(bob, alice).search("#x", "#y")
    assert {w: [p.shape for p in ps] for w, ps in found.items()} == {
        "bob": [torch.Size([2])],
        "alice": [torch.Size([1])],
    }
    assert [p.shape for p in bob.search("#x")] == [torch.Size([2]), torch.Size([3])]
    assert torch.equal((found["alice"][0] * 2).get(), torch.full((1,), 14.0))  # open: derived
    with pytest.raises(TypeError, match="one worker"):
        sy.BaseDataset(found["bob"][0], found["alice"][0])
    with training.connect() as worker, pytest.raises(TypeError, match=r"worker\.dataset"):
        sy.PrivateGridNetwork(bob, worker)


def test_features_tether_lacks_say_so() -> None:
    with pytest.raises(NotImplementedError, match="network nodes, which tether does not implement"):
        sy.PublicGridNetwork  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        sy.not_a_name  # noqa: B018
