"""PySyft 0.2 tutorial "Part 01 - The Basic Tools of Private Deep Learning"
(OpenMined/PySyft, examples/tutorials/), cell by cell, with `import syft as sy` replaced by
`import tether as sy`. Two imports of PySyft's internal modules are replaced too:
`PointerTensor` comes from `tether` (it is not used after the import), and `LoggingTensor`,
which the notebook imports but never uses, has no tether counterpart. What the notebook shows
is asserted; the ids it prints are PySyft's random ones, so only their structure is checked."""

from __future__ import annotations

import torch as _torch


def test_part01_the_basic_tools_of_private_deep_learning() -> None:
    _torch.manual_seed(0)  # not in the notebook: a test runs the same every time

    # Run this cell to see if things work
    import torch
    import torch.nn as nn  # noqa: F401
    import torch.nn.functional as F  # noqa: F401
    from torch.nn import Parameter  # noqa: F401

    import tether as sy
    from tether import PointerTensor

    hook = sy.TorchHook(torch)

    out = torch.tensor([1, 2, 3, 4, 5])
    assert torch.equal(out, torch.tensor([1, 2, 3, 4, 5]))

    x = torch.tensor([1, 2, 3, 4, 5])
    y = x + x
    print(y)
    assert torch.equal(y, torch.tensor([2, 4, 6, 8, 10]))

    # Section 1.1 - Sending Tensors to Bob's Machine
    bob = sy.VirtualWorker(hook, id="bob")

    x = torch.tensor([1, 2, 3, 4, 5])
    y = torch.tensor([1, 1, 1, 1, 1])

    x_ptr = x.send(bob)
    y_ptr = y.send(bob)

    assert isinstance(x_ptr, PointerTensor)

    objects = bob._objects  # {id: tensor([1, 2, 3, 4, 5]), id: tensor([1, 1, 1, 1, 1])}
    assert [t.tolist() for t in objects.values()] == [[1, 2, 3, 4, 5], [1, 1, 1, 1, 1]]

    z = x_ptr + x_ptr

    assert isinstance(z, PointerTensor)

    objects = bob._objects
    assert [t.tolist() for t in objects.values()] == [
        [1, 2, 3, 4, 5],
        [1, 1, 1, 1, 1],
        [2, 4, 6, 8, 10],
    ]

    assert x_ptr.location is bob
    assert bob == x_ptr.location
    assert x_ptr.id_at_location in bob._objects

    me = sy.local_worker
    assert me == x_ptr.owner
    assert x_ptr.owner.id == "me"

    assert torch.equal(x_ptr.get(), torch.tensor([1, 2, 3, 4, 5]))
    assert torch.equal(y_ptr.get(), torch.tensor([1, 1, 1, 1, 1]))
    assert torch.equal(z.get(), torch.tensor([2, 4, 6, 8, 10]))

    assert bob._objects == {}

    # Section 1.2 - Using Tensor Pointers
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1]).send(bob)

    z = x + y

    assert torch.equal(z.get(), torch.tensor([2, 3, 4, 5, 6]))

    # Torch Functions
    z = torch.add(x, y)
    assert isinstance(z, PointerTensor)

    assert torch.equal(z.get(), torch.tensor([2, 3, 4, 5, 6]))

    # Variables (including backpropagation!)
    x = torch.tensor([1, 2, 3, 4, 5.0], requires_grad=True).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1.0], requires_grad=True).send(bob)

    z = (x + y).sum()

    z.backward()

    x = x.get()

    assert x.requires_grad and torch.equal(x.detach(), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))

    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]))
