"""Matrix products in the 2^64 ring: int64 `torch.matmul`, or float64 matmul on 22/21-bit limbs
where that is faster.

int64 matmul has no BLAS kernel on CPU (on some machines 64x784 @ 784x128 takes ~17 ms against
~0.7 ms in float64). Each ring element splits into limbs of 22, 21 and 21 bits (x = l0 + l1*2^22 +
l2*2^43 mod 2^64). Of the nine limb products the three whose shift reaches 2^64 vanish in the
ring; the other six are grouped by shift, each group summed by BLAS in float64:

    a @ b = P0 + P22 * 2^22 + (P43 + 2 * P44) * 2^43   (mod 2^64), with
    P0 = l0 r0,  P22 = l0 r1 + l1 r0,  P43 = l0 r2 + l2 r0,  P44 = l1 r1.

Every limb product is below 2^43 in magnitude but l0 r0 (below 2^44), so each group's sum over
up to 512 terms stays below 2^53: float64 computes it exactly, whatever order BLAS adds in.
The top limb is signed (x >> 43 as is), which saves a mask; the groups' sums are exact either
way. Converting each group once, rather than each limb product, made a training
step's products ~27% cheaper in CPU time (paired runs against dd64367's three-matmul version);
splitting each operand into limbs once rather than per chunk, and Karatsuba's five products
instead of six where the sums allow it (`_karatsuba`), ~7-12% less CPU time over a step's
products and ~5% less for the whole step (in-process paired A/B against the version before).
`torch.matmul` on int64 stays the reference: tests/test_smpc.py checks this gives the same bits.

Which path is faster depends on the CPU: on one of this project's machines int64 matmul took
~17 ms for 64x784 @ 784x128 and the limbs ~2 ms; on another (AVX-512, 2026-12-07) int64
matmul took 0.6 ms and the limbs 1.8-2.2 ms. `ring_matmul` times both once per process on a
product of the training step's size and keeps the faster (their bits are the same), which
bought a training step of Part 12 bis 107 -> 70 ms on the second machine.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch

_CHUNK = 512  # terms per exact float64 sum: 512 * 2 * 2^43 = 2^53
_KARATSUBA = 128  # terms per exact sum of (l0 + l1)(r0 + r1): 128 * (1.5 * 2^22)^2 < 2^53
_LOW, _MID = (1 << 22) - 1, (1 << 21) - 1


def _limbs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bits 0-21 and 22-42 (non-negative), and x >> 43 (signed, -2^20 <= l2 < 2^20): then
    x = l0 + l1 * 2^22 + l2 * 2^43 exactly, and the top limb needs no mask."""
    return (x & _LOW).double(), ((x >> 22) & _MID).double(), (x >> 43).double()


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the 2^64 ring (int64 tensors), by whichever of int64 `torch.matmul` and
    `limb_matmul` is faster on this CPU."""
    return _fastest()(a, b)


@functools.cache
def _fastest() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Both paths timed on a 64x784 @ 784x128 product (the step's largest), best of three
    after a warm-up: a few milliseconds, once per process."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**63), 2**63 - 1, (64, 784), generator=g)
    b = torch.randint(-(2**63), 2**63 - 1, (784, 128), generator=g)

    def best(product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        product(a, b)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            product(a, b)
            times.append(time.perf_counter() - start)
        return min(times)

    return torch.matmul if best(torch.matmul) <= best(limb_matmul) else limb_matmul


def limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the 2^64 ring by float64 limbs, bit for bit what int64 `torch.matmul` gives,
    for 2-D a and b (anything else goes to torch.matmul)."""
    if a.dim() != 2 or b.dim() != 2 or a.dtype != torch.int64 or b.dtype != torch.int64:
        return torch.matmul(a, b)
    l0, l1, l2 = _limbs(a)  # once, then sliced: slicing int64 first makes every op strided
    r0, r1, r2 = _limbs(b)
    if a.shape[1] <= _KARATSUBA:
        return _karatsuba(l0, l1, l2, r0, r1, r2)
    out = None
    for start in range(0, a.shape[1], _CHUNK):
        k = slice(start, start + _CHUNK)
        p0 = (l0[:, k] @ r0[k]).to(torch.int64)
        p22 = torch.addmm(l0[:, k] @ r1[k], l1[:, k], r0[k]).to(torch.int64)
        p43 = torch.addmm(l0[:, k] @ r2[k], l2[:, k], r0[k]).to(torch.int64)
        p43 += (l1[:, k] @ r1[k]).to(torch.int64) << 1
        p0 += p22 << 22
        p0 += p43 << 43
        out = p0 if out is None else out.add_(p0)
    return out if out is not None else torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64)


def _karatsuba(
    l0: torch.Tensor,
    l1: torch.Tensor,
    l2: torch.Tensor,
    r0: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
) -> torch.Tensor:
    """The same groups from five products: P22 = (l0 + l1)(r0 + r1) - l0 r0 - l1 r1, whose
    terms reach 2^45.2, so for up to 128 terms (every product of a training step's backward
    pass and most of its forward pass)."""
    p0 = l0 @ r0
    p44 = l1 @ r1
    p22 = ((l0 + l1) @ (r0 + r1)).sub_(p0).sub_(p44).to(torch.int64)
    p43 = torch.addmm(l0 @ r2, l2, r0).to(torch.int64)
    p43 += p44.to(torch.int64) << 1
    out = p0.to(torch.int64)
    out += p22 << 22
    out += p43 << 43
    return out
