"""A fast path for matrix products in the 2^64 ring: float64 matmul on 22/21-bit limbs.

int64 matmul has no BLAS kernel on CPU (here 64x784 @ 784x128 takes ~17 ms against ~0.7 ms in
float64). Each ring element splits into limbs of 22, 21 and 21 bits (x = l0 + l1*2^22 +
l2*2^43 mod 2^64). Of the nine limb products the three whose shift reaches 2^64 vanish in the
ring; the other six are grouped by shift, each group summed by BLAS in float64:

    a @ b = P0 + P22 * 2^22 + (P43 + 2 * P44) * 2^43   (mod 2^64), with
    P0 = l0 r0,  P22 = l0 r1 + l1 r0,  P43 = l0 r2 + l2 r0,  P44 = l1 r1.

Every limb product is below 2^43 but l0 r0 (below 2^44), so each group's sum over up to 512
terms stays below 2^53: float64 computes it exactly, whatever order BLAS adds in (all terms are
non-negative). Converting each group once, rather than each limb product, made a training
step's products ~27% cheaper in CPU time (paired runs against dd64367's three-matmul version).
`torch.matmul` on int64 stays the reference: tests/test_smpc.py checks this gives the same bits.
"""

from __future__ import annotations

import torch

_SHIFTS = (0, 22, 43)
_MASKS = ((1 << 22) - 1, (1 << 21) - 1, (1 << 21) - 1)
_CHUNK = 512  # terms per exact float64 sum: 512 * 2 * 2^43 = 2^53


def _limbs(x: torch.Tensor) -> list[torch.Tensor]:
    return [((x >> s) & m).to(torch.float64) for s, m in zip(_SHIFTS, _MASKS, strict=True)]


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the 2^64 ring, bit for bit what int64 `torch.matmul` gives, for 2-D a and b
    (anything else goes to torch.matmul)."""
    if a.dim() != 2 or b.dim() != 2 or a.dtype != torch.int64 or b.dtype != torch.int64:
        return torch.matmul(a, b)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64)
    for start in range(0, a.shape[1], _CHUNK):
        l0, l1, l2 = _limbs(a[:, start : start + _CHUNK])
        r0, r1, r2 = _limbs(b[start : start + _CHUNK])
        p22 = torch.addmm(l0 @ r1, l1, r0)
        p43 = torch.addmm(l0 @ r2, l2, r0)
        out += (l0 @ r0).to(torch.int64)
        out += p22.to(torch.int64) << 22
        out += (p43.to(torch.int64) + ((l1 @ r1).to(torch.int64) << 1)) << 43
    return out
