"""The analytic attacks: a step's gradient from the weights, the input from a Linear layer's
gradient, the label from the last layer's."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def step_gradients(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], lr: float
) -> dict[str, torch.Tensor]:
    """The gradient that one plain SGD step of learning rate `lr` applied: `(before - after) /
    lr` for each floating-point tensor (a `fit` at batch 1 with `max_batches=1`, or the
    pointer loop's `model.get()` after one `opt.step()`). Computed in float64."""
    return {
        name: (w.double() - after[name].double()) / lr
        for name, w in before.items()
        if w.is_floating_point()
    }


def invert_linear(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
    """The input of a Linear layer at batch 1, from its gradients: `dL/dW_j = dL/db_j * x`
    for every output j, so any row with a non-zero bias gradient gives `x` exactly (the row
    with the largest one, for the least rounding)."""
    j = int(bias_grad.abs().argmax())
    return weight_grad[j] / bias_grad[j]


def infer_label(weight_grad: torch.Tensor) -> int:
    """The label of a batch-1 step, from the last Linear layer's weight gradient (iDLG): with
    softmax cross-entropy, row k is `(p_k - [k = label]) * h` for the layer's input h; where
    h >= 0 (after ReLU or sigmoid) only the label's row sums to a negative number."""
    return int(weight_grad.sum(dim=1).argmin())
