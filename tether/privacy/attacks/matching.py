"""Gradient matching: DLG (Zhu et al. 2019) and iDLG (Zhao et al. 2020).

The attacker knows the model and its weights before the step (the coordinator sent them) and
the step's gradient. It starts from a random input (and, for DLG, random label logits) and
minimises the squared distance between the gradient that input gives and the observed one,
with L-BFGS, in float64. The model must return log-probabilities (as tether's tutorial models
do) and be twice differentiable (sigmoid, not ReLU, for exact recovery).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tether.privacy.attacks.analytic import infer_label


@dataclass(frozen=True)
class Reconstruction:
    """What an attack recovered: the input (the model's input space), the label, and the
    final squared distance between the gradients."""

    input: torch.Tensor
    label: int
    distance: float


def idlg(
    model: nn.Module,
    gradients: Mapping[str, torch.Tensor],
    shape: tuple[int, ...],
    *,
    last_layer: str,
    iterations: int = 200,
    seed: int = 0,
) -> Reconstruction:
    """iDLG: the label read off the last layer's gradient (`last_layer`: its weight's name),
    then the input found by matching gradients."""
    label = infer_label(gradients[last_layer])
    return _match(model, gradients, shape, label, iterations, seed)


def dlg(
    model: nn.Module,
    gradients: Mapping[str, torch.Tensor],
    shape: tuple[int, ...],
    classes: int,
    *,
    iterations: int = 300,
    seed: int = 0,
) -> Reconstruction:
    """DLG: the input and the label (as logits over `classes`) found together by matching."""
    return _match(model, gradients, shape, classes, iterations, seed, soft=True)


def _match(
    model: nn.Module,
    gradients: Mapping[str, torch.Tensor],
    shape: tuple[int, ...],
    label: int,
    iterations: int,
    seed: int,
    soft: bool = False,
) -> Reconstruction:
    """Minimise the gradient distance over a dummy input (and label logits if `soft`; then
    `label` is the number of classes)."""
    from torch.func import functional_call

    generator = torch.Generator().manual_seed(seed)
    params = {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}
    names = [name for name in params if name in gradients]
    target = [gradients[name].double() for name in names]
    dummy = torch.randn((1, *shape), generator=generator, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(1, label, generator=generator, dtype=torch.float64, requires_grad=True)
    variables = [dummy, logits] if soft else [dummy]
    optimizer = torch.optim.LBFGS(
        variables,
        lr=1.0,
        max_iter=iterations,
        history_size=100,
        tolerance_grad=1e-20,
        tolerance_change=1e-28,
        line_search_fn="strong_wolfe",
    )

    def distance() -> torch.Tensor:
        optimizer.zero_grad()
        output = functional_call(model, params, (dummy,))
        loss = -(logits.softmax(dim=1) * output).sum() if soft else -output[0, label]
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        gap = sum(((g - t) ** 2).sum() for g, t in zip(grads, target, strict=True))
        assert isinstance(gap, torch.Tensor)
        gap.backward()
        return gap

    optimizer.step(distance)  # type: ignore[arg-type]
    final = float(distance().detach())
    guessed = int(logits.argmax()) if soft else label
    return Reconstruction(dummy.detach()[0], guessed, final)
