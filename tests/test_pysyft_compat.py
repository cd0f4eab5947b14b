"""PySyft 0.2 semantics the tutorials rely on (issue 23): queued work runs under the torch state
it was issued in, `.get()` and `send` carry `.grad` (and a `.grad` computed from private data
does not leave a training or strict node), pointer chains among workers in this process, and
the PySyft names a new user meets (or an error naming the tether way)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import WorkerProcess
from torch import nn, optim

import tether as sy
from tether import errors

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


def test_queued_work_runs_under_the_grad_mode_it_was_issued_in() -> None:
    """Part 10's averaging: a forward and backward issued normally, then `model.get()` under
    no_grad, which flushes them. They run with grad on, as eagerly."""
    (bob,) = _workers("bob")
    data, target = torch.tensor([[0, 0], [0, 1], [1, 1.0]]), torch.tensor([[0], [1], [1.0]])
    torch.manual_seed(0)
    model, eager = nn.Linear(2, 1), nn.Linear(2, 1)
    eager.load_state_dict(model.state_dict())
    model.send(bob)
    loss = _linear_step(model, data.send(bob), target.send(bob))
    with torch.no_grad():
        model.get()
        remote_loss = loss.get()
    eager_loss = _linear_step(eager, data, target)
    assert torch.equal(remote_loss.detach(), eager_loss.detach())
    assert remote_loss.requires_grad  # made with grad on, as issued
    for remote, local in zip(model.parameters(), eager.parameters(), strict=True):
        assert torch.equal(remote, local)
    # and the other way round: issued under no_grad, flushed with grad on
    w = torch.ones(2, requires_grad=True).send(bob)
    with torch.no_grad():
        doubled = w * 2
    assert not doubled.requires_grad


def test_queued_work_runs_under_the_inference_mode_and_default_dtype_it_was_issued_in() -> None:
    (bob,) = _workers("bob")
    w = torch.ones(2, requires_grad=True).send(bob)
    ints = torch.arange(3).send(bob)
    torch.set_default_dtype(torch.float64)
    try:
        halves = ints * 0.5  # an int tensor times a float: the default dtype decides
    finally:
        torch.set_default_dtype(torch.float32)
    y = w * 3  # issued with grad on, outside inference mode
    with torch.inference_mode():
        bob.flush()
    assert halves.get().dtype == torch.float64 == (torch.arange(3, dtype=torch.float64) * 0.5).dtype
    y.sum().backward()  # an inference tensor could not be backwarded through
    assert torch.equal(w.get().grad, torch.full((2,), 3.0))


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


def test_features_tether_lacks_say_so() -> None:
    (bob,) = _workers("bob")
    with pytest.raises(NotImplementedError, match="tether has no grid"):
        sy.create_sandbox(globals(), verbose=False)
    for call in (
        lambda: torch.ones(2).fix_precision(),
        lambda: torch.ones(2).share(bob),
        lambda: torch.ones(2).send(bob).fix_prec(),
        lambda: sy.AdditiveSharingTensor,
    ):
        with pytest.raises(NotImplementedError, match=r"secure multi-party computation \(SMPC\)"):
            call()
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        sy.not_a_name  # noqa: B018
