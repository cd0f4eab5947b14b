"""PySyft 0.2 tutorial "Part 9 - Intro to Encrypted Programs" (OpenMined/PySyft,
examples/tutorials/), cell by cell, with `import syft as sy` replaced by `import tether as sy`.
Each cell's printed result in the notebook is asserted (the shares themselves are random: the
test checks that they are int64 ring elements that sum to the secret, as the notebook shows)."""

from __future__ import annotations

import random

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_part09_intro_to_encrypted_programs() -> None:
    # Step 1: Encryption Using Secure Multi-Party Computation
    Q = 1234567891011
    x = 25

    def encrypt(x):
        share_a = random.randint(-Q, Q)
        share_b = random.randint(-Q, Q)
        share_c = (x - share_a - share_b) % Q
        return (share_a, share_b, share_c)

    assert len(encrypt(x)) == 3

    def decrypt(*shares):
        return sum(shares) % Q

    a, b, c = encrypt(25)
    assert decrypt(a, b, c) == 25
    assert decrypt(a, b) != 25 or c % Q == 0  # two shares do not decrypt

    # Step 2: Basic Arithmetic Using SMPC
    x = encrypt(25)
    y = encrypt(5)

    def add(x, y):
        z = list()
        # the first worker adds their shares together
        z.append((x[0] + y[0]) % Q)
        # the second worker adds their shares together
        z.append((x[1] + y[1]) % Q)
        # the third worker adds their shares together
        z.append((x[2] + y[2]) % Q)
        return z

    assert decrypt(*add(x, y)) == 30

    # Step 3: SMPC Using PySyft
    import torch

    import tether as sy

    hook = sy.TorchHook(torch)

    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")
    bill = sy.VirtualWorker(hook, id="bill")

    # Basic Encryption/Decryption
    x = torch.tensor([25])
    assert torch.equal(x, torch.tensor([25]))
    encrypted_x = x.share(bob, alice, bill)
    assert torch.equal(encrypted_x.get(), torch.tensor([25]))

    # Introspecting the Encrypted Values
    assert bob._objects == {}
    x = torch.tensor([25]).share(bob, alice, bill)

    # Bob's share
    bobs_share = list(bob._objects.values())[0]  # noqa: RUF015
    # Alice's share
    alices_share = list(alice._objects.values())[0]  # noqa: RUF015
    # Bill's share
    bills_share = list(bill._objects.values())[0]  # noqa: RUF015
    for share in (bobs_share, alices_share, bills_share):
        assert share.dtype == torch.int64 and share.shape == (1,)
    assert len({int(bobs_share), int(alices_share), int(bills_share)}) == 3
    assert torch.equal(bobs_share + alices_share + bills_share, torch.tensor([25]))

    # Encrypted Arithmetic
    x = torch.tensor([25]).share(bob, alice)
    y = torch.tensor([5]).share(bob, alice)
    z = x + y
    assert torch.equal(z.get(), torch.tensor([30]))
    z = x - y
    assert torch.equal(z.get(), torch.tensor([20]))

    # Encrypted Multiplication
    crypto_provider = sy.VirtualWorker(hook, id="crypto_provider")
    x = torch.tensor([25]).share(bob, alice, crypto_provider=crypto_provider)
    y = torch.tensor([5]).share(bob, alice, crypto_provider=crypto_provider)
    # multiplication
    z = x * y
    assert torch.equal(z.get(), torch.tensor([125]))

    # You can also do matrix multiplication
    x = torch.tensor([[1, 2], [3, 4]]).share(bob, alice, crypto_provider=crypto_provider)
    y = torch.tensor([[2, 0], [0, 2]]).share(bob, alice, crypto_provider=crypto_provider)
    # matrix multiplication
    z = x.mm(y)
    assert torch.equal(z.get(), torch.tensor([[2, 4], [6, 8]]))

    # Encrypted comparison
    x = torch.tensor([25]).share(bob, alice, crypto_provider=crypto_provider)
    y = torch.tensor([5]).share(bob, alice, crypto_provider=crypto_provider)
    z = x > y
    assert torch.equal(z.get(), torch.tensor([1]))
    z = x <= y
    assert torch.equal(z.get(), torch.tensor([0]))
    z = x == y
    assert torch.equal(z.get(), torch.tensor([0]))
    z = x == y + 20
    assert torch.equal(z.get(), torch.tensor([1]))

    # You can also perform max operations
    x = torch.tensor([2, 3, 4, 1]).share(bob, alice, crypto_provider=crypto_provider)
    assert int(x.max().get()) == 4
    x = torch.tensor([[2, 3], [4, 1]]).share(bob, alice, crypto_provider=crypto_provider)
    max_values, max_ids = x.max(dim=0)
    assert torch.equal(max_values.get(), torch.tensor([4, 3]))
    assert torch.equal(max_ids.get(), torch.tensor([1, 0]))  # not printed in the notebook
