"""Pointers on workers behave like the tensors they name; errors say what, where and why."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from conftest import store_of
from torch import nn

import tether as sy
from tether import errors


def test_send_get_round_trip_keeps_values_dtype_and_grad_flag(bob):
    for t in (
        torch.randn(3, 4),
        torch.arange(6).view(2, 3),
        torch.tensor(True),
        torch.randn(4, 5).t(),
        torch.randn(2, 2, dtype=torch.float64).requires_grad_(),
    ):
        back = t.send(bob).get()
        assert back.dtype == t.dtype and back.shape == t.shape
        assert back.requires_grad == t.requires_grad
        assert torch.equal(back.detach(), t.detach())


def test_operators_functions_and_methods_run_remotely(bob):
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    pa, pb = a.send(bob), b.send(bob)
    cases = {
        "add": (pa + pb, a + b),
        "radd": (2 + pa, 2 + a),
        "sub": (pa - 1, a - 1),
        "rsub": (1 - pa, 1 - a),
        "mul": (pa * pb, a * b),
        "div": (pa / 2, a / 2),
        "pow": (pa**2, a**2),
        "neg": (-pa, -a),
        "abs": (abs(pa), abs(a)),
        "matmul": (pa @ pb.t(), a @ b.t()),
        "gt": (pa > pb, a > b),
        "getitem": (pa[1:, ::2], a[1:, ::2]),
        "torch.add": (torch.add(pa, pb, alpha=2), torch.add(a, b, alpha=2)),
        "torch.cat": (torch.cat([pa, pb], dim=1), torch.cat([a, b], dim=1)),
        "F.relu": (F.relu(pa), F.relu(a)),
        "view": (pa.view(-1), a.view(-1)),
        "sum": (pa.sum(dim=0), a.sum(dim=0)),
        "mean": (pa.mean(), a.mean()),
        "local operand": (pa * torch.ones(4), a * torch.ones(4)),
    }
    for name, (pointer, expected) in cases.items():
        assert torch.equal(pointer.get(), expected), name


def test_in_place_ops_change_the_remote_object(bob):
    p = torch.zeros(3).send(bob)
    assert p.add_(1) is p
    p += 2
    p[0] = 10
    assert torch.equal(p.get(), torch.tensor([10.0, 3.0, 3.0]))


def test_location_ids_copy_clone_and_move(bob, alice):
    p = torch.arange(4.0).send(bob)
    assert p.location is bob and p.location.id == "bob"
    assert isinstance(p.id_at_location, int)
    copy, clone = p.copy(), p.clone()
    p.add_(1)
    assert torch.equal(copy.get(), torch.arange(4.0))
    assert torch.equal(clone.get(), torch.arange(4.0))
    moved = p.move(alice)
    assert moved.location is alice
    assert torch.equal(moved.get(), torch.arange(4.0) + 1)
    with pytest.raises(errors.ObjectNotFoundError, match="spent"):
        p + 1


def test_shape_and_dtype_are_known_locally(bob):
    p = torch.randn(5, 3, dtype=torch.float64).send(bob)
    assert p.shape == (5, 3) and p.dtype == torch.float64 and p.dim() == 2
    q = p.view(15, 1).t()
    assert q.shape == (1, 15) and q.size(1) == 15 and len(p) == 5


def test_autograd_runs_where_the_tensor_lives(bob):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    px = x.send(bob)
    assert px.requires_grad
    (px @ px).sum().backward()
    (x @ x).sum().backward()
    assert torch.equal(px.grad.get(), x.grad)


def test_module_send_is_in_place_and_get_brings_trained_weights_back(bob):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    twin = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    twin.load_state_dict(model.state_dict())
    params = list(model.parameters())
    opt, twin_opt = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, twin))
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    px, py = x.send(bob), y.send(bob)
    for _ in range(3):
        assert model.send(bob) is model and model.location is bob
        assert all(isinstance(p, sy.Pointer) for p in model.parameters())
        opt.zero_grad()
        F.mse_loss(model(px), py).backward()
        opt.step()
        model.get()
        twin_opt.zero_grad()
        F.mse_loss(twin(x), y).backward()
        twin_opt.step()
    assert model.location is None
    assert [p for p in model.parameters()] == params  # the same Parameter objects
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    # In process, get() adopts the worker's own tensors (no copy); over a network, copies.
    stored = {
        s.value.data_ptr()
        for s in store_of(bob).objects.values()
        if isinstance(s.value, torch.Tensor)
    }
    assert all(p.data_ptr() in stored for p in params) == isinstance(bob, sy.VirtualWorker)


def test_learning_rate_changes_reach_the_remote_optimizer(bob):
    model, twin = nn.Linear(3, 1), nn.Linear(3, 1)
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = (torch.optim.SGD(m.parameters(), lr=1.0) for m in (model, twin))
    schedules = [
        torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (opt, twin_opt)
    ]
    x = torch.randn(4, 3)
    px = x.send(bob)
    for _ in range(3):
        model.send(bob)
        opt.zero_grad()
        model(px).sum().backward()
        opt.step()
        model.get()
        twin_opt.zero_grad()
        twin(x).sum().backward()
        twin_opt.step()
        for s in schedules:
            s.step()
    torch.testing.assert_close(model.weight, twin.weight, rtol=0, atol=1e-6)


def test_optims_keep_one_state_per_worker(bob, alice):
    from tether.federated.floptimizer import Optims

    model = nn.Linear(2, 1)
    optims = Optims(["bob", "alice"], optim=torch.optim.Adam(model.parameters(), lr=0.1))
    assert optims.get_optim("bob") is not optims.get_optim("alice")
    assert optims.get_optim(bob) is optims.get_optim("bob")
    with pytest.raises(KeyError, match="carol"):
        optims.get_optim("carol")


def test_one_optimizer_cannot_span_two_workers(bob, alice):
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD([*a.parameters(), *b.parameters()], lr=0.1)
    a.send(bob), b.send(alice)
    with pytest.raises(errors.WorkerMismatchError, match=r"bob.*alice|alice.*bob"):
        opt.step()


def test_errors_name_the_op_the_worker_and_the_cause(bob, alice):
    a = torch.ones(2, 3).send(bob)
    with pytest.raises(errors.WorkerMismatchError, match=r"operator.add.*'bob'.*'alice'"):
        a + torch.ones(2, 3).send(alice)
    with pytest.raises(errors.NotAllowedError, match=r"svd.*not in tether's allowlist.*'bob'"):
        torch.linalg.svd(a)
    bad = a @ torch.ones(2, 3).send(bob)  # pipelined: nothing raised yet
    with pytest.raises(errors.RemoteError) as info:
        bad.get()
    assert info.value.op == "operator.matmul" and info.value.worker == "bob"
    assert "cannot be multiplied (2x3 and 2x3)" in str(info.value)
    assert torch.equal((a + 1).get(), torch.full((2, 3), 2.0))  # the worker goes on


def test_a_value_that_cannot_travel_fails_its_own_command_only(bob):
    x = torch.ones(2).send(bob)
    before = x + 1  # queued with the bad command: neither it nor what follows may be lost
    bad = x + object()
    after = x * 3
    # refused by the codec, or (a transport that skips it) by the node's own add
    with pytest.raises(
        (errors.WireError, errors.RemoteError),
        match=r"operator.add on worker 'bob' failed: (WireError: it cannot be sent \(TypeError: "
        r"a value of type object|TypeError: unsupported operand type\(s\) for \+)",
    ):
        bob.flush()
    assert torch.equal(before.get(), torch.full((2,), 2.0))
    assert torch.equal(after.get(), torch.full((2,), 3.0))
    with pytest.raises(errors.ObjectNotFoundError, match="'bob'"):
        bad.get()


def test_what_the_wire_format_lacks_is_named_and_the_rest_still_runs():
    worker = sy.VirtualWorker("carol")  # through the codec
    x = torch.ones(2).send(worker)
    torch.zeros([1] * 65).send(worker)
    with pytest.raises(errors.WireError, match=r"send on worker 'carol'.*65 dimensions"):
        worker.flush()
    with pytest.raises(errors.WireError, match=r"operator.add on worker 'carol'.*64 bits"):
        (x + 2**70).get()
    assert torch.equal((x + 1).get(), torch.full((2,), 2.0))


def test_a_dict_with_keys_other_than_strings_is_refused_where_it_is_passed():
    worker = sy.VirtualWorker("carol")
    x = torch.ones(2).send(worker)
    before = x + 1
    with pytest.raises(TypeError, match=r"Tensor.add got a dict with a key of type int \(1\)"):
        x.add({1: 2.0})
    assert torch.equal(before.get(), torch.full((2,), 2.0))  # nothing queued was lost


def test_a_pointer_whose_object_is_gone_says_so(bob):
    p = torch.ones(2).send(bob)
    bob.flush()  # it has arrived
    for client in bob.node.clients:  # the worker lost everything (restart, eviction)
        bob.node.forget(client)
    with pytest.raises(errors.ObjectNotFoundError, match=r"operator.mul on worker 'bob'.*object"):
        (p * 2).get()


def test_the_truth_of_a_remote_value_is_not_guessed(bob):
    with pytest.raises(TypeError, match="get"):
        bool(torch.ones(1).send(bob) > 0)


def test_dropped_pointers_free_their_objects(bob):
    x = torch.ones(2).send(bob)
    for _ in range(100_000):
        y = x + 1
    del x, y
    gc.collect()
    assert len(store_of(bob)) == 0


def test_a_training_loop_leaves_nothing_behind_on_either_side(bob):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data, target = torch.randn(4, 3, 4).send(bob), torch.tensor([0, 1, 2, 0]).send(bob)

    def train(batches: int) -> tuple[int, int]:
        for _ in range(batches):
            model.send(bob)
            opt.zero_grad()
            F.cross_entropy(model(data), target).backward()
            opt.step()
            model.get()
        gc.collect()
        bob.flush()
        return len(bob.client._meta), len(store_of(bob))

    assert train(3) == train(30)


def test_what_a_reply_says_of_an_object_freed_meanwhile_is_not_kept(bob):
    x = torch.ones(2).send(bob)
    bob.flush()
    known = len(bob.client._meta)
    y = x + torch.ones(2)  # carries a tensor, so its frame leaves at once (no reply read yet)
    del y
    gc.collect()
    bob.flush()  # reads the reply describing y, then the one to freeing it
    assert len(bob.client._meta) == known
    assert len(store_of(bob)) == 1


def test_a_fetched_value_never_shares_the_workers_memory(bob):
    y = torch.ones(3).send(bob) * 1
    value = y.get(delete=False)
    y.add_(1)
    bob.flush()
    assert torch.equal(value, torch.ones(3))
    value.mul_(5)
    assert torch.equal(y.get(), torch.full((3,), 2.0))


def test_nodes_lend_only_what_may_leave_freely():
    from tether.node import Node, Release
    from tether.node.policy import lendable
    from tether.node.store import Privacy, Stored

    for release, privacy, readonly, lent in [
        (Release.OPEN, Privacy.PUBLIC, False, True),
        (Release.STRICT, Privacy.PUBLIC, False, False),  # (it tracks memory: copies only)
        (Release.TRAINING, Privacy.PUBLIC, False, False),
        (Release.OPEN, Privacy.DERIVED, False, True),
        (Release.STRICT, Privacy.DERIVED, False, False),
        (Release.TRAINING, Privacy.DERIVED, False, False),
        (Release.OPEN, Privacy.PRIVATE, False, False),
        (Release.OPEN, Privacy.PUBLIC, True, False),
    ]:
        node = Node("owner", release=release)
        node.store("scientist").put(1, Stored(torch.ones(2), privacy, readonly))
        store = node.store("scientist")
        assert lendable(store, [1], release) is lent, (release, privacy, readonly)
        assert not lendable(store, [1, 2], release)  # nothing stored there
        assert not lendable(node.store("someone else"), [1], release)


def test_a_node_hands_an_in_process_client_only_what_it_lends():
    """The Values of adopted Gets that the node lends skip the codec: the client gets the
    stored tensors themselves. Everything else in the frame is encoded and copied as usual."""
    from tether.node import Node
    from tether.node.store import Privacy, Stored
    from tether.wire import Done, Failure, Get, decode_parts, encode_parts

    node = Node("owner", release="open")
    mine, owners, private = torch.ones(2), torch.zeros(3), torch.full((2,), 7.0)
    store = node.store("scientist")
    store.put(1, Stored(mine))
    store.put(2, Stored(owners, readonly=True))  # shares the owner's memory: never lent
    store.put(3, Stored(private, Privacy.PRIVATE))
    commands = [Get([1]), Get([2]), Get([3]), Get([1])]
    answer = node.run(encode_parts(commands), "scientist", lend=frozenset({0, 1, 2}))
    assert list(answer.lent) == [0] and answer.lent[0].value[0] is mine
    replies = decode_parts(answer.parts())
    assert type(replies[0]) is Done  # left out of the frame, replaced by the transport
    (copied,) = replies[1].value
    assert torch.equal(copied, owners) and copied.data_ptr() != owners.data_ptr()
    assert type(replies[2]) is Failure and "private" in replies[2].message
    (fetched,) = replies[3].value  # not adopted: encoded, so a copy
    assert torch.equal(fetched, mine) and fetched.data_ptr() != mine.data_ptr()


@pytest.mark.parametrize("release", ["open", "training", "strict"])
def test_get_all_adopting_takes_a_workers_memory_only_where_it_may_lend(release):
    """`get_all(..., adopt=True)` (what the SMPC protocols fetch openings with) hands over
    the stored tensor itself on an open worker in this process, a copy elsewhere; either
    way the value is right and the worker frees it."""
    worker = sy.VirtualWorker(id=f"lender-{release}", release=release)
    made = torch.ones(3).send(worker) + 1
    stored = worker.store.objects[made.id].value
    [value] = sy.get_all([made], adopt=True)
    assert torch.equal(value, torch.full((3,), 2.0))
    assert (value.data_ptr() == stored.data_ptr()) is (release == "open")
    assert made.id not in worker.store.objects


def test_hooks_workers_and_pointers_never_draw_from_the_rng():
    model = nn.Linear(3, 1)  # made before the seed: its init draws from the RNG
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hook = sy.TorchHook(torch)
    worker = sy.VirtualWorker(hook, id="rng")
    ptr = torch.ones(3).send(worker)
    (ptr + 1).get()
    model.send(worker)
    model(ptr).get()
    model.get()
    assert torch.equal(torch.rand(3), expected)


def test_worker_accepts_hook_or_name():
    hook = sy.TorchHook(torch)
    assert sy.VirtualWorker(hook, id="bob").id == "bob"
    assert sy.VirtualWorker("alice").id == "alice"


def test_a_worker_never_trains_on_a_stale_copy_of_the_model(make_worker):
    """Workers keep their copy of each parameter; a send must refresh it whenever the local
    values changed — by training elsewhere, or by the user — even if memory is recycled."""
    joe, jane = make_worker("joe"), make_worker("jane")
    model = nn.Linear(64, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 64)
    inputs = {joe: x.send(joe), jane: x.send(jane)}
    for step, worker in enumerate([joe] * 3 + [jane] * 3 + [joe] * 3 + [jane] * 3 * 40):
        if step % 7 == 0:
            with torch.no_grad():
                model.bias.add_(0.01)  # the user changes the weights locally
        expected = model.weight.detach().clone(), model.bias.detach().clone()
        model.send(worker)
        assert torch.equal(model.weight.copy().get(), expected[0]), step
        assert torch.equal(model.bias.copy().get(), expected[1]), step
        opt.zero_grad()
        model(inputs[worker]).sum().backward()
        opt.step()
        model.get()
