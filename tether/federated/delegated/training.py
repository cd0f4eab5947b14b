"""Delegated training: what a worker runs when a coordinator sends it a model and a config.

`fit` and `evaluate` are allowlisted node ops (`tether.federated.fit`, `...evaluate`): the
coordinator sends a model spec (see modelspec) and a plain-data config, the worker trains on its
own dataset and answers with weights and metrics. Everything a config names (loss, optimizer,
its arguments) is checked before any work, and a bad name is refused with the names allowed.

Training is deterministic given the config's seed and leaves the node's global RNG alone: the
batch order comes from a local generator and dropout and the like draw inside `fork_rng`.
Batches are cut in one memory layout (canonical NCHW strides), see `canonical`.

Long because the configs, their checks and the routines (fit, train, evaluate) are one contract
with the coordinator, read together; DP-SGD's own machinery lives in tether.privacy.dp.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from tether.federated.delegated.modelspec import build
from tether.ops import ALLOWLIST
from tether.privacy.dp import EXACT_METRICS_REFUSED, DPSettings, OwnerDP
from tether.privacy.dp import sgd as dp_sgd
from tether.privacy.dp.update_clip import clip_move

LOSSES = (
    "nll_loss",
    "cross_entropy",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
    "poisson_nll_loss",
    "soft_margin_loss",
    "multi_margin_loss",
)
_NUMBERS = (bool, int, float)


@dataclass(frozen=True)
class TrainConfig:
    """How a worker trains: `max_batches` caps the batches of one `fit` (the tutorial's
    federate_after_n_batches); None trains `epochs` full epochs. `proximal_mu`: FedProx's
    proximal term (0: none). `dp`: DP-SGD's `{"noise": 1.1, "clip": 1.0}` (tether.privacy.dp).
    `update_clip`: DP-FedAvg's C, the L2 norm the client's whole move (its floating-point
    weights minus those it started from) is clipped to at the end of training (None: none)."""

    loss: str = "nll_loss"
    optimizer: str = "SGD"
    optimizer_args: dict[str, Any] = field(default_factory=lambda: {"lr": 0.1})
    batch_size: int = 32
    epochs: int = 1
    max_batches: int | None = None
    shuffle: bool = True
    drop_last: bool = False
    seed: int = 0
    proximal_mu: float = 0.0
    dp: dict[str, float] | None = None
    update_clip: float | None = None

    @classmethod
    def parse(cls, config: Mapping[str, Any] | TrainConfig) -> TrainConfig:
        """Check a plain-data config; ValueError naming the first thing that is wrong."""
        if isinstance(config, TrainConfig):
            return config
        made = cls(**_known_fields(cls, config, "training config"))
        _positive("batch_size", made.batch_size)
        _positive("epochs", made.epochs)
        if made.max_batches is not None:
            _positive("max_batches", made.max_batches)
        _check_type("shuffle", made.shuffle, bool)
        _check_type("drop_last", made.drop_last, bool)
        _check_type("seed", made.seed, int)
        if type(made.proximal_mu) not in (int, float) or not 0 <= made.proximal_mu < 1e6:
            raise ValueError(f"proximal_mu must be a number >= 0, got {made.proximal_mu!r}")
        loss_function(made.loss)
        optimizer_class(made.optimizer, made.optimizer_args)
        if made.dp is not None:
            DPSettings.parse(made.dp)
        clip = made.update_clip
        if clip is not None and (type(clip) not in (int, float) or not 0 < clip < math.inf):
            raise ValueError(f"update_clip must be a positive number or None, got {clip!r}")
        return made

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalConfig:
    """How an evaluator scores a model: batch size and loss (the mean over samples)."""

    loss: str = "nll_loss"
    batch_size: int = 1000

    @classmethod
    def parse(cls, config: Mapping[str, Any] | EvalConfig) -> EvalConfig:
        if isinstance(config, EvalConfig):
            return config
        made = cls(**_known_fields(cls, config, "evaluation config"))
        _positive("batch_size", made.batch_size)
        loss_function(made.loss)
        return made

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known_fields(cls: type, config: Any, what: str) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise ValueError(f"a {what} is a mapping, got {type(config).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in config if k not in names)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(names)}")
    return dict(config)


def _positive(name: str, value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_type(name: str, value: Any, kind: type) -> None:
    if type(value) is not kind:
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")


def loss_function(name: Any) -> Any:
    """`nll_loss` or `torch.nn.functional.nll_loss`: the allowlisted functional loss."""
    short = name.removeprefix("torch.nn.functional.") if isinstance(name, str) else None
    entry = ALLOWLIST.get(f"torch.nn.functional.{short}") if short in LOSSES else None
    if entry is None:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return entry.fn


def optimizer_class(name: Any, arguments: Any) -> type[torch.optim.Optimizer]:
    """`SGD` or `torch.optim.SGD`, with its arguments checked against its signature."""
    short = name.removeprefix("torch.optim.") if isinstance(name, str) else ""
    entry = ALLOWLIST.get(f"torch.optim.{short}") if short.isidentifier() else None
    if entry is None or not isinstance(entry.fn, type):
        known = sorted(
            p.removeprefix("torch.optim.")
            for p, e in ALLOWLIST.items()
            if p.startswith("torch.optim.") and isinstance(e.fn, type)
        )
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(known)}")
    if not isinstance(arguments, Mapping):
        raise ValueError(f"optimizer_args must be a mapping, got {type(arguments).__name__}")
    accepted = set(inspect.signature(entry.fn).parameters) - {"self", "params"}
    for key, value in arguments.items():
        if key not in accepted or key.startswith("_"):
            raise ValueError(f"{short} takes no argument {key!r}; it takes {sorted(accepted)}")
        values = value if isinstance(value, tuple | list) else (value,)
        if not all(isinstance(v, _NUMBERS) for v in values) or len(values) > 4:
            raise ValueError(f"{short} argument {key!r} must be a number (or a few), got {value!r}")
    return entry.fn


# ---- data -----------------------------------------------------------------------------------


def canonical(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor with standard row-major (NCHW) strides. `is_contiguous()` is not enough: a
    1-channel NHWC image batch also passes it, yet convolutions then take the channels_last
    kernels (tens of percent faster or slower, depending on the CPU) and the tutorial's `.view`
    fails on their output. One layout makes timings comparable and the model's code valid."""
    if tensor.stride() == _row_major(tensor.shape):
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def batches(
    data: torch.Tensor, targets: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(data, targets)` batches for `config.epochs` epochs, at most `config.max_batches`."""
    n = len(data)
    size = config.batch_size
    served = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator) if config.shuffle else torch.arange(n)
        stop = n - n % size if config.drop_last else n
        for start in range(0, stop, size):
            if config.max_batches is not None and served == config.max_batches:
                return
            index = order[start : start + size]
            yield data.index_select(0, index), targets.index_select(0, index)
            served += 1


def _check_data(data: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError(
            "fit and evaluate take a data tensor and a targets tensor (the pointers "
            "a worker's published dataset gives)"
        )
    if len(data) != len(targets) or len(data) == 0:
        raise ValueError(
            f"data has {len(data)} samples and targets {len(targets)}; they must "
            "match and not be empty"
        )
    return canonical(data), canonical(targets)


# ---- the ops --------------------------------------------------------------------------------


def fit(
    spec: Any,
    data: Any,
    targets: Any,
    config: Any,
    correction: Any = None,
    *,
    max_elements: int | None = None,
    privacy: OwnerDP | None = None,
) -> dict[str, Any]:
    """Train the model a spec describes on `(data, targets)` as `config` says; `correction`:
    SCAFFOLD's control-variate difference (`c - c_i`), a tensor per parameter name, added to
    every gradient; `max_elements`: the limit on the model and each result of its forward pass
    (see `modelspec.build`; a node passes its own); `privacy`: the worker owner's DP rules
    (a node passes them, see `enforce_dp`).

    Returns plain data: `weights` (the state dict after training), `samples` and `batches`
    used, `losses` (per batch), `epoch_losses` (mean per epoch), `seconds` of training and
    `build_seconds` spent making the model from its spec."""
    cfg = TrainConfig.parse(config)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # building draws initial weights
        model = build(spec, max_elements)
    built = time.perf_counter()
    result = train(model, data, targets, cfg, correction=correction, privacy=privacy)
    return {"weights": _state(model), **result, "build_seconds": built - start}


def train(
    model: nn.Module,
    data: Any,
    targets: Any,
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    correction: Any = None,
    privacy: OwnerDP | None = None,
) -> dict[str, Any]:
    """The local training every client runs, deployed (`fit`, on a model built from a spec) or
    simulated (on one model reused for every client, loaded with the global weights; pass its
    `optimizer` to reuse that too: its state is cleared and its arguments set from the config
    first, so it equals a fresh one).

    Deterministic given `config.seed` (the batch order and dropout's draws), and leaves the
    global RNG alone. With `config.proximal_mu`, each gradient gets FedProx's proximal term
    `mu * (w - w_start)`; with `correction`, SCAFFOLD's `c - c_i`. Returns `samples`,
    `batches`, `losses`, `epoch_losses` and `seconds`; the weights are the model's. With
    `config.dp` or the owner's `privacy`: DP-SGD, see tether.privacy.dp.sgd.start. With
    `config.update_clip`, the model's move is clipped to that norm at the end and the result
    says whether it was within it (`within_clip`), see tether.privacy.dp.update_clip."""
    loss_fn = loss_function(config.loss)
    data, targets = _check_data(data, targets)
    private = dp_sgd.start(config, privacy, data, targets)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    corrections = _corrections(correction, named, model)
    anchors = [p.detach().clone() for _, p in named] if config.proximal_mu else None
    clip = config.update_clip
    begun = _copy(model) if clip is not None else None
    if optimizer is None:
        optimizer_cls = optimizer_class(config.optimizer, config.optimizer_args)
        optimizer = optimizer_cls([p for _, p in named], **config.optimizer_args)
    else:
        optimizer.state.clear()
        for group in optimizer.param_groups:
            group.update(config.optimizer_args)
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    samples = 0
    model.train()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # dropout and the like draw here
        torch.default_generator.manual_seed(config.seed)  # torch.manual_seed: +0.3 ms (CUDA's)
        source = (
            private.batches(data, targets) if private else batches(data, targets, config, generator)
        )
        for x, y in source:
            optimizer.zero_grad(set_to_none=True)
            if private is None:
                loss = loss_fn(model(x), y)
                loss.backward()
            else:
                loss = private.backward(model, loss_fn, x, y, named)
            if anchors is not None or corrections is not None:
                _adjust_gradients(named, config.proximal_mu, anchors, corrections)
            optimizer.step()
            losses.append(loss.item())
            samples += len(x)
    epoch_ends = _epoch_ends(len(data), config, len(losses))
    result = {
        "samples": samples,
        "batches": len(losses),
        "losses": losses,
        "epoch_losses": _epoch_means(losses, epoch_ends),
        "seconds": time.perf_counter() - start,
    }
    if begun is not None and clip is not None:
        clipped, result["within_clip"] = clip_move(model.state_dict(), begun, clip)
        model.load_state_dict(clipped)
    return result if private is None else private.result(result)


def _corrections(
    correction: Any, named: list[tuple[str, nn.Parameter]], model: nn.Module
) -> list[torch.Tensor] | None:
    """SCAFFOLD's correction, one tensor per trained parameter in order, checked: it comes
    from the coordinator, and a wrong shape must fail here rather than broadcast silently.
    It may also name the model's other state (buffers): a coordinator keeps its variates
    per state entry, not knowing which are trained."""
    if correction is None:
        return None
    trained = {n for n, _ in named}
    if (
        not isinstance(correction, Mapping)
        or not trained <= set(correction)
        or not set(correction) <= model.state_dict().keys()
    ):
        raise ValueError(
            "correction must map each trained parameter's name to a tensor (other keys of "
            f"the model's state are ignored), the names being {[n for n, _ in named]}"
        )
    out = []
    for name, p in named:
        c = correction[name]
        if not isinstance(c, torch.Tensor) or c.shape != p.shape or not c.is_floating_point():
            raise ValueError(f"correction {name!r} must be a float tensor of shape {list(p.shape)}")
        out.append(c.to(p.dtype))
    return out


def _adjust_gradients(
    named: list[tuple[str, nn.Parameter]],
    mu: float,
    anchors: list[torch.Tensor] | None,
    corrections: list[torch.Tensor] | None,
) -> None:
    """FedProx's `mu * (w - w_start)` and SCAFFOLD's `c - c_i`, added to each gradient."""
    with torch.no_grad():
        for i, (_, p) in enumerate(named):
            if p.grad is None:
                continue
            if anchors is not None:
                p.grad.add_(p - anchors[i], alpha=mu)
            if corrections is not None:
                p.grad.add_(corrections[i])


def _epoch_ends(n: int, cfg: TrainConfig, served: int) -> list[int]:
    per_epoch = n // cfg.batch_size if cfg.drop_last else -(-n // cfg.batch_size)
    ends = [min((e + 1) * per_epoch, served) for e in range(cfg.epochs)]
    return sorted({e for e in ends if e > 0})


def _epoch_means(losses: list[float], ends: list[int]) -> list[float]:
    means, begin = [], 0
    for end in ends:
        means.append(sum(losses[begin:end]) / (end - begin))
        begin = end
    return means


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights now, copied (training changes them in place)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights, without copying: the model is dropped after `fit`."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def evaluate(
    spec: Any,
    data: Any,
    targets: Any,
    config: Any = None,
    *,
    max_elements: int | None = None,
    privacy: OwnerDP | None = None,
) -> dict[str, Any]:
    """Score the model a spec describes on `(data, targets)`: `samples`, `correct`,
    `accuracy`, `loss` (mean per sample), `predicted` (how many predictions per label) and
    `seconds`. `max_elements`: as for `fit`; refused where the owner requires DP (`privacy`)."""
    if privacy is not None:
        raise ValueError(EXACT_METRICS_REFUSED)
    cfg = EvalConfig.parse(config or {})
    data, targets = _check_data(data, targets)
    return score(build(spec, max_elements), data, targets, cfg)


def score(model: nn.Module, data: Any, targets: Any, config: EvalConfig) -> dict[str, Any]:
    """`evaluate` on a model at hand (a simulation scores its one model each round)."""
    loss_fn = loss_function(config.loss)
    data, targets = _check_data(data, targets)
    model.eval()
    correct, total_loss = 0, 0.0
    predicted: torch.Tensor | None = None
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(data), config.batch_size):
            x, y = (
                data[begin : begin + config.batch_size],
                targets[begin : begin + config.batch_size],
            )
            output = model(x)
            total_loss += loss_fn(output, y, reduction="sum").item()
            guess = output.argmax(dim=1)
            correct += int((guess == y).sum())
            counts = torch.bincount(guess, minlength=output.shape[1])
            predicted = counts if predicted is None else predicted + counts
    assert predicted is not None
    n = len(data)
    return {
        "samples": n,
        "correct": correct,
        "accuracy": correct / n,
        "loss": total_loss / n,
        "predicted": predicted.tolist(),
        "seconds": time.perf_counter() - start,
    }
