"""Clipped per-sample gradients, the reference way: every sample's gradient computed on its own
(`torch.func.vmap` over `torch.func.grad`), clipped to norm `clip`, and summed.

Works for any model whose samples do not mix in the forward pass (so not BatchNorm in training
mode); costs the memory of one gradient per sample. `ghost` is the fast path for models made
of Linear layers, and is tested against this one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[..., torch.Tensor]


def clip_factors(norms: torch.Tensor, clip: float) -> torch.Tensor:
    """Per sample, the factor that brings its gradient's norm to at most `clip`
    (`min(1, clip / norm)`, as Opacus's flat clipping computes it)."""
    return (clip / (norms + 1e-6)).clamp(max=1.0)


def clipped_sum(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    named: list[tuple[str, nn.Parameter]],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The sum over the batch of the per-sample losses, and of the clipped per-sample gradients
    of the parameters `named` (one tensor each, in order)."""
    from torch.func import functional_call, grad, vmap

    if len(x) == 0:
        return torch.zeros(()), [torch.zeros_like(p) for _, p in named]
    params = {name: p.detach() for name, p in named}

    def one(trained: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor):
        output = functional_call(model, trained, (xi.unsqueeze(0),))
        loss = loss_fn(output, yi.unsqueeze(0), reduction="sum")
        return loss, loss.detach()

    per_sample, losses = vmap(
        grad(one, has_aux=True), in_dims=(None, 0, 0), randomness="different"
    )(params, x, y)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_sample.values()], dim=1).norm(dim=1)
    factors = clip_factors(norms, clip)
    sums = [torch.einsum("b,b...->...", factors, per_sample[name]) for name, _ in named]
    return losses.sum(), sums
