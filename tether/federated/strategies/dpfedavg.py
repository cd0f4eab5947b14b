"""DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent
Language Models"): client-level differential privacy at the coordinator, so that the model
released after each round says almost nothing about whether any one client took part.

Each round every client joins independently with probability q (`fraction`: Poisson sampling,
as the accountant assumes, so a round may have no client at all). A client clips its own move
(its weights minus the global weights it started from, one vector over all floating-point
entries) to L2 norm C before uploading (`TrainConfig.update_clip`), so one client moves the
sum by at most C even under secure aggregation. The coordinator adds Gaussian noise of standard
deviation `noise_multiplier * C` to the summed moves and divides by the expected number of
clients q*N, not by how many came (the paper's fixed-denominator estimator: the count itself
would depend on who took part). Each round is one step of the subsampled Gaussian mechanism at
rate q; `epsilon(delta)` is Opacus's RDP accountant over the rounds so far.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2019, "Differentially Private Learning
with Adaptive Clipping"), with `target_quantile` gamma: each client also says whether its move was
within C, the coordinator estimates the fraction that were, b = (Σ(bit - 1/2) + N(0, sigma_b^2)) /
(q*N) + 1/2, and moves C geometrically towards the gamma-quantile of the clients' norms,
C *= exp(-clip_lr * (b - gamma)). The count is a second release: as the paper's Theorem 1 says,
the two together are as private as one Gaussian step of noise multiplier z when the moves get
z_Δ = (z^-2 - (2sigma_b)^-2)^-1/2 (the bits are centred, so one client moves their sum by 1/2).
So `noise_multiplier` stays the z the accountant charges, and the moves get the larger z_Δ;
sigma_b (`quantile_noise`) must exceed z/2, and the paper suggests sigma_b = q*N/20.

Integer state entries (BatchNorm's step counter) are not part of a clipped move, so no noise
calibrated to C could cover them: they keep the global value. The noise draws from a torch
generator seeded from the operating system's entropy (as DP-SGD's, see docs/privacy.md). The
accountant's count, the clients' number N and an adaptive C go into the run's checkpoint
(`state_dict`); the generator's state does not (whoever reads a checkpoint should not learn
the noise to come): a resumed run draws fresh noise, which is as private.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from tether.federated.delegated.training import TrainConfig
from tether.federated.strategies.base import (
    State,
    Strategy,
    StrategyState,
    Sum,
    Task,
    Update,
    check_number,
    saved_value,
    shifted,
)
from tether.privacy.dp.accountant import Steps, epsilon
from tether.privacy.dp.update_clip import clipped_move

DEFAULT_CLIP_LR = 0.2  # Andrew et al.'s η_C for the geometric update


class DPFedAvg(Strategy):
    """DP-FedAvg with clipping norm `clip_norm` (C), noise multiplier `noise_multiplier` (z),
    sampling rate `fraction` (q) and ε reported at `delta`; adaptive clipping towards the
    `target_quantile` of the clients' update norms when one is given (with `clip_lr` and the
    count's noise `quantile_noise`)."""

    name = "dpfedavg"
    weigh_by_samples = False

    def __init__(
        self,
        *,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        delta: float = 1e-5,
        target_quantile: float | None = None,
        clip_lr: float | None = None,
        quantile_noise: float | None = None,
        **base: Any,
    ) -> None:
        if base.get("min_clients", 1) != 1:
            raise ValueError(
                "dpfedavg samples each client on its own with probability fraction (Poisson "
                "sampling, which its accounting assumes): min_clients does not apply"
            )
        super().__init__(**base)
        check_number("clip_norm", clip_norm, lambda v: 0 < v < math.inf, "a positive number")
        check_number("noise_multiplier", noise_multiplier, lambda v: 0 <= v < 1e6, ">= 0")
        check_number("delta", delta, lambda v: 0 < v < 1, "in (0, 1)")
        self.clip, self.noise, self.delta = float(clip_norm), float(noise_multiplier), delta
        self.target_quantile = target_quantile
        self.update_noise = self.noise
        if target_quantile is None:
            if clip_lr is not None or quantile_noise is not None:
                raise ValueError(
                    "clip_lr and quantile_noise are adaptive clipping's: give target_quantile too"
                )
        else:
            check_number("target_quantile", target_quantile, lambda v: 0 < v < 1, "in (0, 1)")
            clip_lr = DEFAULT_CLIP_LR if clip_lr is None else clip_lr
            check_number("clip_lr", clip_lr, lambda v: 0 < v < 1e6, "> 0")
            if quantile_noise is None:
                raise ValueError(
                    "adaptive clipping needs quantile_noise, the std of the noise on the count "
                    "of clients within the clip (Andrew et al. suggest expected clients / 20)"
                )
            check_number("quantile_noise", quantile_noise, lambda v: 0 <= v < 1e6, ">= 0")
            self.update_noise = split_noise(self.noise, quantile_noise)
        self.clip_lr, self.quantile_noise = clip_lr, quantile_noise
        self.clients = 0  # N: the most clients `sample` was offered
        self.rounds = 0  # the last round aggregated: the accountant's steps
        self.last: dict[str, Any] = {}
        self.generator = torch.Generator()
        self.generator.seed()  # the OS's entropy: see the module's docstring

    def sample(self, round: int, clients: Sequence[str], rng: random.Random) -> list[str]:
        """Each client independently with probability `fraction` (possibly none)."""
        self.clients = max(self.clients, len(clients))
        return [client for client in clients if rng.random() < self.fraction]

    def configure(self, round: int, client: str, config: TrainConfig) -> Task:
        task = super().configure(round, client, config)
        return replace(task, config=replace(task.config, update_clip=self.clip))

    def aggregate(
        self, round: int, updates: Sequence[Update], global_state: Mapping[str, torch.Tensor]
    ) -> State:
        """The clients' moves, each clipped to C again here (a no-op for a client that
        clipped its own; a bound on one that did not), summed as `summed` would (each client
        once, in float64; one pass per update), then `aggregate_sum`."""
        total = {key: torch.zeros(v.shape, dtype=torch.float64) for key, v in global_state.items()}
        for update in updates:
            move, _ = clipped_move(update.state, global_state, self.clip)
            for key, value in total.items():
                if key in move:
                    value.add_(move[key])
                else:  # an integer entry, summed as `summed` sums it (and left unreleased)
                    value.add_(update.state[key].double() - global_state[key].double())
        said = all(u.within_clip is not None for u in updates)
        within = float(sum(1 for u in updates if u.within_clip)) if said else None
        total_sum = Sum(total, float(len(updates)), len(updates), within)
        return self.aggregate_sum(round, total_sum, global_state)

    def aggregate_sum(
        self, round: int, total: Sum, global_state: Mapping[str, torch.Tensor]
    ) -> State:
        """The global weights moved by the noised sum over q*N; C adapted after, if asked."""
        if self.clients == 0:
            raise ValueError(
                "dpfedavg divides by the expected number of clients, fraction * N: let it "
                "sample the round's clients (a driver calls sample first)"
            )
        if self.target_quantile is not None and total.within_clip is None:
            raise ValueError(
                "adaptive clipping needs the count of clients whose move was within the clip "
                "(the Sum's within_clip): the clients did not report it"
            )
        expected = self.fraction * self.clients
        std = self.update_noise * self.clip
        moved = {}
        for key, value in global_state.items():
            if not value.is_floating_point():
                moved[key] = value
                continue
            move = total.delta[key]
            if std > 0:
                move = move + std * torch.randn(
                    move.shape, generator=self.generator, dtype=torch.float64
                )
            moved[key] = shifted(value, move / expected)
        self.rounds = round
        self.last = {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "clip_norm": self.clip,
            "noise_multiplier": self.noise,
        }
        if self.target_quantile is not None:
            assert total.within_clip is not None
            self.clip *= math.exp(-self._clip_step(total.within_clip, total.clients, expected))
        return moved

    def _clip_step(self, within: float, clients: int, expected: float) -> float:
        """`clip_lr * (b - gamma)`: b the noised fraction of clients within the clip."""
        assert self.target_quantile is not None and self.clip_lr is not None
        count = within - clients / 2
        if self.quantile_noise:
            count += self.quantile_noise * float(torch.randn((), generator=self.generator))
        return self.clip_lr * (count / expected + 0.5 - self.target_quantile)

    def epsilon(self, delta: float | None = None) -> float:
        """ε of the rounds aggregated so far at `delta` (default: the strategy's): one step of
        noise multiplier z at rate q per round (inf when z = 0)."""
        if self.noise == 0 and self.rounds:
            return math.inf
        steps = [Steps(self.noise, self.fraction, self.rounds)]
        return epsilon(steps, self.delta if delta is None else delta)

    def record(self) -> dict[str, Any]:
        """ε so far (at `delta`), the C and z the last round used."""
        return dict(self.last)

    def state_dict(self) -> StrategyState:
        """C (adapted, under adaptive clipping), N and the rounds the accountant counts."""
        saved = super().state_dict()
        saved.values.update(clip_norm=self.clip, clients=self.clients, rounds=self.rounds)
        return saved

    def load_state_dict(self, saved: StrategyState) -> None:
        super().load_state_dict(saved)
        self.clip = saved_value(saved.values, "clip_norm", float)
        self.clients = saved_value(saved.values, "clients", int)
        self.rounds = saved_value(saved.values, "rounds", int)


def split_noise(total: float, count_noise: float) -> float:
    """The moves' noise multiplier z_Δ that keeps one round as private as a Gaussian step of
    multiplier `total` when the count of clients within the clip gets noise `count_noise`
    (Andrew et al. 2019, Theorem 1); ValueError when the count's noise is too small."""
    if total == 0:
        return 0.0
    if 2 * count_noise <= total:
        raise ValueError(
            f"quantile_noise must be more than noise_multiplier / 2 = {total / 2:g} (the count's "
            f"share of the privacy), got {count_noise:g}"
        )
    return (total**-2 - (2 * count_noise) ** -2) ** -0.5
