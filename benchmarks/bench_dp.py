"""A DP-SGD epoch of the tutorial's MLP (784-500-10) on the 5,000-image MNIST sample, batch 64:
tether's (delegated training's `train` with `dp`, the ghost-norm fast path) against plain SGD
and against Opacus 1.6's hook mode and ghost clipping, in the same run.

Same work, same setup: the same model, SGD at lr 0.05, noise multiplier 1.0 and clipping norm
1.0, one epoch of ceil(5000 / 64) = 79 steps. Every DP mode draws Poisson batches (each image
joins each batch with probability 64 / 5000) by the same masked index, so the modes differ only
in how they clip and noise; Opacus's own DataLoader, which collates image by image, is left
out in its favour. Plain SGD shuffles into batches of 64. Each round runs every mode once, in
turn; a mode's ratio is the median over rounds of its time over the plain epoch's of that round.
"noise alone" is the cost of drawing the epoch's Gaussian noise (79 x 397,510 numbers).

Run: python benchmarks/bench_dp.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn, optim

from tether.datasets import MNIST, materialize
from tether.datasets.mnist import MEAN, STD
from tether.federated.delegated.training import TrainConfig, train
from tether.privacy.attacks.models import mlp
from tether.transforms import Compose, Normalize, ToTensor

BATCH, NOISE, CLIP, LR = 64, 1.0, 1.0, 0.05


def poisson_batches(n: int) -> list[torch.Tensor]:
    steps = -(-n // BATCH)
    return [(torch.rand(n) < BATCH / n).nonzero().flatten() for _ in range(steps)]


def plain(data: torch.Tensor, targets: torch.Tensor) -> float:
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=LR)
    start = time.perf_counter()
    for index in torch.randperm(len(data)).split(BATCH):
        opt.zero_grad()
        F.nll_loss(model(data[index]), targets[index]).backward()
        opt.step()
    return time.perf_counter() - start


def tether_dp(data: torch.Tensor, targets: torch.Tensor) -> float:
    model = mlp()
    config = TrainConfig.parse(
        {"batch_size": BATCH, "optimizer_args": {"lr": LR}, "dp": {"noise": NOISE, "clip": CLIP}}
    )
    start = time.perf_counter()
    train(model, data, targets, config)
    return time.perf_counter() - start


def opacus_epoch(ghost: bool) -> Callable[[torch.Tensor, torch.Tensor], float]:
    def epoch(data: torch.Tensor, targets: torch.Tensor) -> float:
        from opacus import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        model = mlp()
        settings = {"noise_multiplier": NOISE, "max_grad_norm": CLIP, "expected_batch_size": BATCH}
        criterion = nn.NLLLoss()
        if ghost:
            module = GradSampleModuleFastGradientClipping(model, max_grad_norm=CLIP)
            opt = DPOptimizerFastGradientClipping(optim.SGD(model.parameters(), lr=LR), **settings)
            loss_fn = DPLossFastGradientClipping(module, opt, criterion)
        else:
            module = GradSampleModule(model)
            opt = DPOptimizer(optim.SGD(model.parameters(), lr=LR), **settings)
            loss_fn = criterion
        batches = poisson_batches(len(data))
        start = time.perf_counter()
        for index in batches:
            opt.zero_grad()
            loss_fn(module(data[index]), targets[index]).backward()
            opt.step()
        seconds = time.perf_counter() - start
        module._close()
        return seconds

    return epoch


def noise_alone(data: torch.Tensor, targets: torch.Tensor) -> float:
    size = sum(p.numel() for p in mlp().parameters())
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(-(-len(data) // BATCH)):
        torch.randn(size, generator=generator)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)  # Opacus's notes on its own hooks, each epoch
    transform = Compose([ToTensor(), Normalize((MEAN,), (STD,))])
    data, targets = materialize(MNIST(root=None, train=True, transform=transform))
    modes: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
        "plain SGD": plain,
        "tether DP-SGD": tether_dp,
        "Opacus hooks": opacus_epoch(ghost=False),
        "Opacus ghost clipping": opacus_epoch(ghost=True),
        "noise alone": noise_alone,
    }
    for run in modes.values():  # warm up: imports, the accountant's first (noise, rate)
        run(data[:640], targets[:640])
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, run in modes.items():
            times[name].append(run(data, targets))
    print(
        f"one epoch, {len(data)} MNIST images, batch {BATCH}, MLP 784-500-10, "
        f"{args.threads} thread(s), {args.repeats} interleaved rounds"
    )
    for name, seconds in times.items():
        ratios = [s / p for s, p in zip(seconds, times["plain SGD"], strict=True)]
        print(
            f"  {name:<24} {statistics.median(seconds) * 1e3:8.1f} ms   "
            f"{statistics.median(ratios):5.2f}x plain SGD"
        )
    best = min((statistics.median(times[m]), m) for m in ("Opacus hooks", "Opacus ghost clipping"))
    ahead = [b / t for t, b in zip(times["tether DP-SGD"], times[best[1]], strict=True)]
    print(f"tether DP-SGD is {statistics.median(ahead):.2f}x faster than {best[1]} (median)")


if __name__ == "__main__":
    main()
