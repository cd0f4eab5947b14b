"""DP-SGD (Abadi et al. 2016) inside delegated training: what `train` runs when a config asks
for DP or the worker's owner requires it.

Batches are Poisson-sampled, as Opacus's `DPDataLoader` draws them: each sample joins each batch
independently with probability `rate = batch_size / samples`, so a batch's size varies (and may
be 0) and the accountant's subsampling assumption holds. Each step clips every sample's gradient
to norm C, adds Gaussian noise of standard deviation `noise * C` to the sum and divides by the
expected batch size; the optimizer then steps as usual. A run is charged to the owner's ledger
before its first step, for all the steps it will take.

The batch sampling and the noise draw from a torch generator seeded from the operating
system's entropy (`torch.Generator.seed`), never from the config's seed: a coordinator that
knew them could subtract the noise, or learn which samples a step used. torch's generator
(Mersenne Twister) is not a cryptographically secure RNG; see docs/privacy.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tether.privacy.dp import ghost, per_sample
from tether.privacy.dp.accountant import Steps, epsilon
from tether.privacy.dp.ledger import Charge
from tether.privacy.dp.owner import DEFAULT_DELTA, DPSettings, OwnerDP


class PrivateRun:
    """One DP-SGD run over `samples` samples: `steps` Poisson-sampled batches of expected size
    `batch_size`, clipped and noised as `settings` say; `charge`: what it cost."""

    def __init__(
        self, settings: DPSettings, samples: int, batch_size: int, steps: int, charge: Charge
    ) -> None:
        self.settings, self.samples, self.steps = settings, samples, steps
        self.batch_size = batch_size
        self.rate = min(1.0, batch_size / samples)
        self.charge = charge
        self._generator = torch.Generator()
        self._generator.seed()  # the OS's entropy: see the module's docstring

    def batches(
        self, data: torch.Tensor, targets: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The run's Poisson-sampled `(data, targets)` batches."""
        for _ in range(self.steps):
            chosen = torch.rand(self.samples, generator=self._generator) < self.rate
            index = chosen.nonzero().flatten()
            yield data.index_select(0, index), targets.index_select(0, index)

    def backward(
        self,
        model: nn.Module,
        loss_fn: per_sample.LossFn,
        x: torch.Tensor,
        y: torch.Tensor,
        named: list[tuple[str, nn.Parameter]],
    ) -> torch.Tensor:
        """Set each trained parameter's `.grad` to the step's private gradient: the clipped
        per-sample gradients summed, noised, divided by the expected batch size. Returns the
        summed loss (which stays on the worker: it is an exact function of the data)."""
        clip = self.settings.clip
        _check_per_sample(model)
        found = None
        layers = ghost.linear_layers(model, named)
        if layers:
            found = ghost.clipped_sum(model, loss_fn, x, y, clip, named, layers)
        if found is None:
            found = per_sample.clipped_sum(model, loss_fn, x, y, clip, named)
        loss, sums = found
        total = sum(g.numel() for g in sums)
        noise = torch.randn(total, generator=self._generator, dtype=sums[0].dtype)
        offset = 0
        for (_, p), g in zip(named, sums, strict=True):
            g.add_(noise[offset : offset + g.numel()].view_as(g), alpha=self.settings.noise * clip)
            offset += g.numel()
            p.grad = g.div_(self.batch_size).to(p.dtype)
        return loss

    def result(self, plain: dict[str, Any]) -> dict[str, Any]:
        """A training's result as a DP run releases it: without the losses (exact functions
        of the data, they stay on the worker), with what the run spent under `privacy`."""
        privacy = {
            "noise": self.settings.noise,
            "clip": self.settings.clip,
            "sample_rate": self.rate,
            "steps": self.steps,
            "delta": self.charge.delta,
            "epsilon": self.charge.epsilon,
            "epsilon_total": self.charge.total,
        }
        return {**plain, "losses": [], "epoch_losses": [], "privacy": privacy}


def start(
    config: Any, owner: OwnerDP | None, data: torch.Tensor, targets: torch.Tensor
) -> PrivateRun | None:
    """The DP-SGD run a training (`config`: its TrainConfig) must be, or None when neither
    the config's `dp` nor the worker's `owner` asks for DP. Charged to the owner's ledger
    before it starts (BudgetError if over budget); without an owner, only this run's ε is
    reported (at δ = 1e-5)."""
    if config.dp is None and owner is None:
        return None
    wanted = DPSettings.parse(config.dp) if config.dp is not None else None
    settings = owner.settle(wanted) if owner is not None else wanted
    assert settings is not None
    batch_size = config.batch_size
    steps = steps_of(len(data), batch_size, config.epochs, config.max_batches)
    planned = Steps(settings.noise, min(1.0, batch_size / len(data)), steps)
    if owner is not None:
        charge = owner.charge(data, targets, planned)
    else:
        own = epsilon([planned], DEFAULT_DELTA)
        charge = Charge(own, own, DEFAULT_DELTA)
    return PrivateRun(settings, len(data), batch_size, steps, charge)


def steps_of(samples: int, batch_size: int, epochs: int, max_batches: int | None) -> int:
    """How many steps a DP run takes: an epoch is `ceil(samples / batch_size)` batches (as
    for plain training), at most `max_batches` in all."""
    steps = epochs * math.ceil(samples / batch_size)
    return steps if max_batches is None else min(steps, max_batches)


def _check_per_sample(model: nn.Module) -> None:
    """Refuse layers that carry one sample's data to others or into the weights: BatchNorm
    mixes a batch's samples, and running statistics (BatchNorm's, InstanceNorm's) are
    written from the data and released with the weights, unnoised."""
    norms = nn.modules.batchnorm
    for module in model.modules():
        if not (isinstance(module, norms._NormBase) and module.training):
            continue
        if isinstance(module, norms._BatchNorm) or module.track_running_stats:
            raise ValueError(
                "DP-SGD needs each sample's gradient on its own and releases only noised "
                f"gradients; {type(module).__name__} mixes a batch's samples or keeps running "
                "statistics of the data: use GroupNorm or LayerNorm in a model trained with DP"
            )
