"""PySyft 0.2 tutorial "Part 03 - Advanced Remote Execution Tools" (OpenMined/PySyft,
examples/tutorials/), cell by cell, with `import syft as sy` replaced by `import tether as sy`.
The notebook shows no outputs; what its text says happens is asserted: a pointer sent to alice
is held by alice while bob keeps the data, and `.get()` comes back one hop at a time."""

from __future__ import annotations

import torch as _torch


def _values(worker) -> list:
    """What a worker holds: a tensor's values, or the kind of anything else (a Pointer)."""
    objects = worker._objects.values()
    return [v.tolist() if isinstance(v, _torch.Tensor) else type(v).__name__ for v in objects]


def test_part03_advanced_remote_execution_tools() -> None:
    import torch

    import tether as sy

    hook = sy.TorchHook(torch)

    # Section 3.1 - Pointers to Pointers
    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")

    # this is a local tensor
    x = torch.tensor([1, 2, 3, 4])

    # this sends the local tensor to Bob
    x_ptr = x.send(bob)

    # now we can SEND THE POINTER to alice!!!
    pointer_to_x_ptr = x_ptr.send(alice)

    assert pointer_to_x_ptr.location is alice

    # As you can see above, Bob still has the actual data
    assert _values(bob) == [[1, 2, 3, 4]]

    # Alice, on the other hand, has x_ptr!! (notice how it points at bob)
    [held] = alice._objects.values()
    assert isinstance(held, sy.Pointer) and held.location is bob

    # and we can use .get() to get x_ptr back from Alice
    x_ptr = pointer_to_x_ptr.get()
    assert isinstance(x_ptr, sy.Pointer) and x_ptr.location is bob

    # and then we can use x_ptr to get x back from Bob!
    x = x_ptr.get()
    assert torch.equal(x, torch.tensor([1, 2, 3, 4]))

    # Arithmetic on Pointer -> Pointer -> Data Object
    assert bob._objects == {}
    assert alice._objects == {}

    p2p2x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)

    y = p2p2x + p2p2x

    assert _values(bob) == [[1, 2, 3, 4, 5], [2, 4, 6, 8, 10]]
    assert _values(alice) == ["Pointer", "Pointer"]

    assert torch.equal(y.get().get(), torch.tensor([2, 4, 6, 8, 10]))

    assert _values(bob) == [[1, 2, 3, 4, 5]]
    assert _values(alice) == ["Pointer"]

    assert torch.equal(p2p2x.get().get(), torch.tensor([1, 2, 3, 4, 5]))

    assert bob._objects == {}
    assert alice._objects == {}

    # Section 3.2 - Pointer Chain Operations
    # x is now a pointer to the data which lives on Bob's machine
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)

    print("  bob:", bob._objects)
    print("alice:", alice._objects)
    assert _values(bob) == [[1, 2, 3, 4, 5]] and alice._objects == {}

    x = x.move(alice)

    print("  bob:", bob._objects)
    print("alice:", alice._objects)
    assert bob._objects == {} and _values(alice) == [[1, 2, 3, 4, 5]]

    assert x.location is alice
