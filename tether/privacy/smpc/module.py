"""PySyft's SMPC calls on torch objects: `tensor.fix_precision()`, `tensor.share(...)`,
`ptr.fix_precision()`, `model.fix_precision().share(...)` and `optimizer.fix_precision()`.
`install()` attaches them (from `tether/__init__.py`); nothing below this package knows them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tether import errors
from tether.privacy.smpc import ops, protocols, ring
from tether.privacy.smpc.tensor import (
    AdditiveSharingTensor,
    FixedPrecisionTensor,
    _check_ring_option,
    _parties,
)
from tether.remote import Pointer
from tether.remote.hook import optimize_other_parameters


def fix_tensor(
    tensor: torch.Tensor, precision_fractional: int = 3, base: int = 10, **_: Any
) -> FixedPrecisionTensor:
    """`x.fix_precision()`: reals encoded in the ring (PySyft's default: 3 decimal digits)."""
    return FixedPrecisionTensor(
        ring.encode(tensor, precision_fractional, base), precision_fractional, base
    )


def fix_pointer(
    pointer: Pointer, precision_fractional: int = 3, base: int = 10, **_: Any
) -> FixedPrecisionTensor:
    """`ptr.fix_precision()`: encoded where the tensor is."""
    encoded = protocols.call(
        pointer, ops.PATHS["encode"], pointer, int(precision_fractional), int(base)
    )
    return FixedPrecisionTensor(encoded, precision_fractional, base)


def share_tensor(
    tensor: torch.Tensor,
    *workers: Any,
    crypto_provider: Any = None,
    requires_grad: bool = False,
    field: Any = None,
    **_: Any,
) -> AdditiveSharingTensor:
    """`x.share(bob, alice, ...)` of integers (reals: `x.fix_precision().share(...)`)."""
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(
            f"share() splits integers; this tensor is {tensor.dtype}: "
            "x.fix_precision().share(...) encodes reals first"
        )
    _check_ring_option(field)
    parties = _parties(workers, crypto_provider)
    return AdditiveSharingTensor._share(tensor.to(ring.DTYPE), parties, None, 10, requires_grad)


def share_pointer(pointer: Pointer, *workers: Any, crypto_provider: Any = None, **_: Any) -> Any:
    raise TypeError(
        "a pointer to reals is shared after encoding, where it is: "
        "ptr.fix_precision().share(bob, alice, crypto_provider=...)"
    )


def fix_module(
    module: nn.Module, precision_fractional: int = 3, base: int = 10, **_: Any
) -> nn.Module:
    """`model.fix_precision()`: every parameter encoded, in place."""
    for m in module.modules():
        for name, value in m._parameters.items():
            if isinstance(value, torch.Tensor):
                m._parameters[name] = fix_tensor(value.detach(), precision_fractional, base)  # type: ignore[assignment]
    return module


def share_module(
    module: nn.Module,
    *workers: Any,
    crypto_provider: Any = None,
    requires_grad: bool = False,
    **_: Any,
) -> nn.Module:
    """`model.share(...)`: every fixed-precision parameter shared, in place."""
    parties = _parties(workers, crypto_provider)
    for m in module.modules():
        for name, value in m._parameters.items():
            if isinstance(value, torch.Tensor):
                raise TypeError(f"parameter {name!r} holds reals: model.fix_precision().share(...)")
            if isinstance(value, FixedPrecisionTensor):
                m._parameters[name] = value.share(  # type: ignore[assignment]
                    *parties.workers, crypto_provider=crypto_provider, requires_grad=requires_grad
                )
    return module


class FixedPrecisionSGD:
    """`optimizer.fix_precision()` for an SGD over shared parameters: w <- w - lr * grad, with
    lr public (encoded at each parameter's precision)."""

    def __init__(self, params: list[AdditiveSharingTensor], lr: float) -> None:
        self.params = params
        self.lr = float(lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    updated = p - p.grad * self.lr
                    p.shares, p.shape = updated.shares, updated.shape


def _init_for_shares(optimizer: torch.optim.Optimizer, params: list, defaults: dict) -> None:
    """torch.optim.X(shared parameters): keeps them for `optimizer.fix_precision()`."""
    optimizer.defaults = defaults
    optimizer.param_groups = [{**defaults, "params": params}]
    optimizer.state = {}  # type: ignore[assignment]

    def refuse(*_: Any, **__: Any) -> None:
        raise errors.NotAllowedError(
            "this optimizer holds shared parameters: step the one optimizer.fix_precision() gives"
        )

    optimizer.step = refuse  # type: ignore[method-assign, assignment]
    optimizer.zero_grad = refuse  # type: ignore[method-assign]


def fix_optimizer(optimizer: torch.optim.Optimizer, **_: Any) -> FixedPrecisionSGD:
    """`optimizer.fix_precision()`: plain SGD over shared parameters (momentum, weight decay
    and other optimizers are not implemented on shares)."""
    group = optimizer.param_groups[0]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    extra = {k: v for k, v in group.items() if k in ("momentum", "weight_decay", "dampening") and v}
    if (
        type(optimizer) is not torch.optim.SGD
        or extra
        or not all(isinstance(p, AdditiveSharingTensor) for p in params)
    ):
        raise NotImplementedError(
            "optimizer.fix_precision() steps plain SGD (no momentum or weight decay) over a "
            "model shared with model.fix_precision().share(...); "
            f"got {type(optimizer).__name__} {extra or ''}"
        )
    return FixedPrecisionSGD(params, group["lr"])


def install() -> None:
    """Attach the SMPC calls to torch's tensors, modules, optimizers and to pointers."""
    for name in ("fix_precision", "fix_prec"):
        setattr(torch.Tensor, name, fix_tensor)
        setattr(Pointer, name, fix_pointer)
        setattr(nn.Module, name, fix_module)
        setattr(torch.optim.Optimizer, name, fix_optimizer)
    torch.Tensor.share = share_tensor  # type: ignore[attr-defined]
    Pointer.share = share_pointer  # type: ignore[attr-defined]
    nn.Module.share = share_module  # type: ignore[attr-defined]
    optimize_other_parameters(AdditiveSharingTensor, _init_for_shares)
