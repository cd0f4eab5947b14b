"""Clipped per-sample gradients, the fast way, for models whose trained parameters are all in
Linear layers (the tutorial's MLP): one forward, one backward, no per-sample gradient made.

For a Linear layer with input `a` (batch x in) and gradient `g` at its output (batch x out),
sample i's weight gradient is the outer product `g_i a_iᵀ`, whose norm is `|g_i| |a_i|` (the
"ghost norm" of Goodfellow 2015 and Li et al. 2022), and its bias gradient is `g_i`. So the
per-sample norms come from `a` and `g` alone, and the clipped sum is one matmul per layer,
`(c * g)ᵀ a`, the size of the ordinary weight gradient. The backward computes only the
gradients at the layers' outputs (`torch.autograd.grad`), not the weights' own.
`per_sample` is the reference this is tested against; benchmarks/bench_dp.py measures both.
"""

from __future__ import annotations

import torch
from torch import nn

from tether.privacy.dp.per_sample import LossFn, clip_factors

# Layers that act on each sample on its own (row by row): a chain of them cannot mix samples.
_ROWWISE = (
    nn.Linear, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.LogSigmoid, nn.Identity, nn.Dropout,
)  # fmt: skip


def linear_layers(model: nn.Module, named: list[tuple[str, nn.Parameter]]) -> list[nn.Linear]:
    """The Linear layers of `model` if the fast path applies to it, else []: its forward must
    be a visible chain of row-wise layers (an `nn.Sequential`, or a model from a spec that is
    one: `chain()`), so that no step mixes a batch's samples (a sample's gradient must depend
    on that sample alone, or clipping does not bound what it reveals), and every trained
    parameter (`named`) must be in its Linear layers."""
    chain = getattr(model, "chain", None)
    layers = (
        list(model) if isinstance(model, nn.Sequential) else chain() if callable(chain) else None
    )
    if not layers or not all(_rowwise(m) for m in layers):
        return []
    linear = [m for m in layers if type(m) is nn.Linear]
    held = {id(p) for m in linear for p in m.parameters(recurse=False)}
    return linear if linear and all(id(p) in held for _, p in named) else []


def _rowwise(module: nn.Module) -> bool:
    """Whether a layer of the chain keeps each sample to itself (dimension 0 left alone)."""
    if isinstance(module, nn.Flatten):
        return module.start_dim > 0
    if isinstance(module, nn.Softmax | nn.LogSoftmax | nn.Softmin):
        return module.dim is not None and (module.dim > 0 or module.dim == -1)
    return type(module) in _ROWWISE


def clipped_sum(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    named: list[tuple[str, nn.Parameter]],
    layers: list[nn.Linear],
) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """As `per_sample.clipped_sum`; None (nothing changed) when the forward pass did not call
    each layer exactly once on a batch of vectors (a layer reused, or a sequence input)."""
    seen: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen.append((module, inputs[0], output))  # type: ignore[arg-type]

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if len(seen) != len(layers) or len({id(m) for m, _, _ in seen}) != len(seen):
        return None
    if any(a.dim() != 2 or not o.requires_grad for _, a, o in seen):
        return None
    loss = loss_fn(output, y, reduction="sum")
    grads = torch.autograd.grad(loss, [o for _, _, o in seen])
    trained = {id(p) for _, p in named}
    norms2 = torch.zeros(len(x), dtype=output.dtype)
    for (layer, a, _), g in zip(seen, grads, strict=True):
        g2 = g.square().sum(1)
        if id(layer.weight) in trained:
            norms2.addcmul_(a.square().sum(1), g2)
        if layer.bias is not None and id(layer.bias) in trained:
            norms2.add_(g2)
    factors = clip_factors(norms2.sqrt(), clip)
    sums: dict[int, torch.Tensor] = {}
    for (layer, a, _), g in zip(seen, grads, strict=True):
        scaled = g * factors[:, None]
        sums[id(layer.weight)] = scaled.t().mm(a.detach())
        if layer.bias is not None:
            sums[id(layer.bias)] = scaled.sum(0)
    return loss.detach(), [sums[id(p)] for _, p in named]
