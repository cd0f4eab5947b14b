"""The op table: the only way a name sent by a peer becomes something a node will run.

Each entry maps a dotted path to an object resolved here, at import time, from real modules.
A peer's string is only ever a key into this table: nothing is looked up with `getattr` on
peer input, dunder names are never entries, and things that read or write files, run code,
or touch raw memory (`torch.load`, `from_file`, storages, `apply_`, hooks, ...) are absent.

Both sides read it: the node resolves and guards calls with it, the scientist side asks it
which names exist. Adding an op is adding a name to one of the lists below (and a test that
uses it); a feature adds its own ops from its package with `register` (as `torch.library`
does), so nothing here imports a feature. The allocation guards are in `tether.ops.guards`.
Long because it is the table itself: its lists of names, and `register`'s rules for features.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tether.ops import guards
from tether.ops.guards import Guard


@dataclass(frozen=True, slots=True)
class Entry:
    """What a path resolves to. `self_type`: the type the first argument must have (methods).
    `guard`: estimates the elements the call will allocate, so huge ones are refused first.
    `node_limited`: the call builds and runs a whole model, so the node hands it its own limit
    per result as `max_elements=` (a peer may not). `releases`, `data_args`, `caller`,
    `approves`: see `register`."""

    path: str
    fn: Callable
    self_type: type | None = None
    guard: Guard | None = None
    node_limited: bool = False
    releases: bool = False
    data_args: tuple[int, ...] = ()
    caller: bool = False
    approves: bool = False


class OpState:
    """State a feature's ops keep on a node between calls, in the client's store (secure
    aggregation's MaskingClient, SMPC's dealing keys): opaque, not data. The node never sends
    it (a Get is refused: it is not a value the wire carries), and PySyft's view of what a
    worker holds (`VirtualWorker._objects`) leaves it out."""

    __slots__ = ()


# ---- the table ------------------------------------------------------------------------------

_ELEMENTWISE_BINARY = """
add sub mul div true_divide floor_divide remainder fmod pow atan2 maximum minimum fmax fmin
eq ne lt le gt ge logical_and logical_or logical_xor bitwise_and bitwise_or bitwise_xor
hypot copysign where lerp addcmul addcdiv clamp clip xlogy
""".split()

_TORCH_FUNCTIONS = """
abs absolute acos asin atan ceil cos cosh exp exp2 expm1 floor frac log log10 log1p log2
logical_not neg negative reciprocal round rsqrt sigmoid sign sin sinh sqrt square tan tanh trunc
relu erf erfc erfinv lgamma digamma isnan isinf isfinite nan_to_num
sum mean std var prod max min amax amin argmax argmin median mode logsumexp norm dist all any
count_nonzero cumsum cumprod sort argsort topk kthvalue unique std_mean var_mean
allclose isclose equal numel is_tensor is_floating_point is_complex
softmax log_softmax dropout
cat concat stack hstack vstack split chunk unbind flatten reshape squeeze unsqueeze transpose
permute t flip roll narrow select index_select masked_select gather take diag tril triu
diagonal movedim swapaxes clone detach
mm bmm matmul dot mv addmm
zeros_like ones_like empty_like full_like rand_like randn_like randint_like
tensor as_tensor
bincount histc
get_default_dtype is_grad_enabled
""".split()

_TENSOR_METHODS = """
add add_ sub sub_ mul mul_ div div_ true_divide floor_divide remainder fmod pow pow_
atan2 maximum minimum eq ne lt le gt ge logical_and logical_or logical_not logical_xor
abs abs_ neg neg_ exp exp_ log log_ log1p sqrt sqrt_ rsqrt sigmoid sigmoid_ tanh tanh_
relu relu_ sign sin cos floor ceil round round_ trunc clamp clamp_ clip clip_ lerp lerp_
addcmul addcmul_ addcdiv addcdiv_ reciprocal square erf where nan_to_num
sum mean std var prod max min amax amin argmax argmin median norm all any logsumexp
cumsum cumprod sort argsort topk softmax log_softmax
view view_as reshape reshape_as flatten unflatten squeeze squeeze_ unsqueeze unsqueeze_
transpose transpose_ permute t t_ flip roll narrow select index_select masked_select gather
chunk split unbind diag tril triu diagonal movedim
contiguous clone detach detach_ copy_ zero_ fill_ normal_ uniform_ requires_grad_
masked_fill masked_fill_ index_fill_ scatter scatter_ scatter_add scatter_add_ index_add_
mm bmm matmul dot mv addmm
float double half bfloat16 int long short bool byte char to type_as
item tolist numel dim size stride nelement element_size is_contiguous is_floating_point
is_complex equal allclose isclose eq_ ne_
bincount unique
backward retain_grad
new_tensor
""".split()

_TENSOR_ATTRIBUTES = (
    "grad data T mT H shape dtype requires_grad is_leaf ndim device real imag".split()
)

_FUNCTIONAL = """
relu relu6 leaky_relu elu selu celu gelu silu mish softplus softsign hardtanh hardswish
hardsigmoid sigmoid tanh logsigmoid tanhshrink threshold glu prelu
softmax log_softmax softmin dropout dropout1d dropout2d dropout3d alpha_dropout
linear bilinear conv1d conv2d conv3d conv_transpose1d conv_transpose2d
max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d
adaptive_max_pool1d adaptive_max_pool2d adaptive_avg_pool1d adaptive_avg_pool2d
_max_pool1d _max_pool2d _max_pool3d max_pool1d_with_indices max_pool2d_with_indices
adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices
_adaptive_max_pool1d _adaptive_max_pool2d
batch_norm layer_norm group_norm instance_norm local_response_norm normalize
embedding one_hot pad
nll_loss cross_entropy mse_loss l1_loss smooth_l1_loss huber_loss binary_cross_entropy
binary_cross_entropy_with_logits kl_div poisson_nll_loss soft_margin_loss
multi_margin_loss margin_ranking_loss hinge_embedding_loss cosine_similarity
pairwise_distance triplet_margin_loss cosine_embedding_loss
""".split()

_LAYERS = """
Linear Bilinear Identity Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d
BatchNorm1d BatchNorm2d BatchNorm3d LayerNorm GroupNorm InstanceNorm1d InstanceNorm2d
Dropout Dropout1d Dropout2d Dropout3d AlphaDropout Embedding
ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Sigmoid Tanh Softplus Softsign
Hardtanh Hardswish Hardsigmoid LogSigmoid Softmax LogSoftmax Softmin Threshold GLU
Flatten Unflatten MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d
AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveMaxPool1d AdaptiveMaxPool2d ZeroPad2d
Sequential ModuleList ModuleDict
NLLLoss CrossEntropyLoss MSELoss L1Loss SmoothL1Loss HuberLoss BCELoss BCEWithLogitsLoss
KLDivLoss CosineSimilarity PairwiseDistance
""".split()

_OPTIMIZERS = "SGD Adam AdamW Adagrad Adadelta Adamax NAdam RAdam RMSprop Rprop ASGD".split()

# Losses that compare their inputs element by element, broadcasting them (the others, such as
# nll_loss with class-index targets, never outgrow their input).
_BROADCASTING_LOSSES = """
mse_loss l1_loss smooth_l1_loss huber_loss binary_cross_entropy binary_cross_entropy_with_logits
kl_div poisson_nll_loss soft_margin_loss margin_ranking_loss hinge_embedding_loss
cosine_similarity pairwise_distance triplet_margin_loss
""".split()
_MATMUL_GUARDS: dict[str, Guard] = {
    "mm": guards.matmul,
    "bmm": guards.matmul,
    "matmul": guards.matmul,
    "mv": guards.matmul,
    "dot": guards.matmul,
    "addmm": guards.addmm,
    "outer": guards.product,
    "kron": guards.product,
    "diag": guards.diag,
    "bincount": guards.bincount,
    "repeat_interleave": guards.repeat_interleave,
    "index_select": guards.index_select,
}
_TORCH_GUARDS: dict[str, Guard] = {
    **{name: guards.broadcast for name in _ELEMENTWISE_BINARY},
    **_MATMUL_GUARDS,
    "zeros": guards.factory,
    "ones": guards.factory,
    "empty": guards.factory,
    "rand": guards.factory,
    "randn": guards.factory,
    "full": guards.full,
    "randint": guards.randint,
    "randperm": guards.randperm,
    "arange": guards.range_,
    "linspace": guards.steps,
    "logspace": guards.steps,
    "eye": guards.eye,
    "tile": guards.repeat,
    "cartesian_prod": guards.product,
    "broadcast_to": guards.expand,
    "cat": guards.total,
    "concat": guards.total,
    "stack": guards.total,
    "hstack": guards.total,
    "vstack": guards.total,
    "histc": guards.histc,
    "dist": guards.broadcast,
}
_TENSOR_GUARDS: dict[str, Guard] = {
    **{name: guards.broadcast for name in _ELEMENTWISE_BINARY},
    **{f"{name}_": guards.broadcast for name in _ELEMENTWISE_BINARY},
    **_MATMUL_GUARDS,
    "repeat": guards.repeat,
    "tile": guards.repeat,
    "expand": guards.expand,
    "unfold": guards.unfold,
    "new_zeros": guards.new,
    "new_ones": guards.new,
    "new_empty": guards.new,
    "new_full": guards.new,
    "tolist": guards.python_items,
}
_FUNCTIONAL_GUARDS: dict[str, Guard] = {
    **{name: guards.broadcast for name in _BROADCASTING_LOSSES},
    "linear": guards.linear,
    "bilinear": guards.dry_run(F.bilinear),
    "conv1d": guards.conv,
    "conv2d": guards.conv,
    "conv3d": guards.conv,
    "conv_transpose1d": guards.dry_run(F.conv_transpose1d),
    "conv_transpose2d": guards.dry_run(F.conv_transpose2d),
    "pad": guards.pad,
    "one_hot": guards.one_hot,
    "embedding": guards.embedding,
}

_OPERATORS = """
add sub mul truediv floordiv mod pow matmul neg pos abs invert and_ or_ xor
eq ne lt le gt ge getitem setitem lshift rshift
""".split()
_BROADCASTING_OPERATORS = "truediv floordiv mod and_ or_ xor eq ne lt le gt ge rshift".split()
# Those that can make a Python int bound its bits first (`guards.MAX_INT_BITS`).
_OPERATOR_GUARDS: dict[str, Guard] = {
    **{name: guards.broadcast for name in _BROADCASTING_OPERATORS},
    **{"add": guards.plus, "sub": guards.plus, "mul": guards.sequence_times},
    **{"pow": guards.power, "lshift": guards.shift, "matmul": guards.matmul},
    "getitem": guards.index,
}

_BUILTINS = "float int bool len abs min max round sum list tuple dict str".split()
_BUILTIN_GUARDS: dict[str, Guard] = {
    **{name: guards.python_items for name in ("list", "tuple", "min", "max")},
    **{"sum": guards.summation, "int": guards.integer, "round": guards.rounding},
}


def _module_parameters(module: nn.Module, recurse: bool = True) -> list[nn.Parameter]:
    return list(module.parameters(recurse))


def _module_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assign(target: torch.Tensor, value: torch.Tensor) -> None:
    """Overwrite a stored tensor's values in place, keeping its identity (and so any
    optimizer state that refers to it)."""
    with torch.no_grad():
        target.copy_(value)


def _set_hyperparameters(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """Mirror a local optimizer's changed hyperparameters (an lr schedule, say)."""
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"optimizer has {len(optimizer.param_groups)} groups, got {len(groups)}")
    for group, update in zip(optimizer.param_groups, groups, strict=True):
        unknown = set(update) - (set(group) - {"params"})
        if unknown:
            raise ValueError(f"unknown optimizer hyperparameters {sorted(unknown)}")
        group.update(update)


def _optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """Step with the optimizer's own class (no closure: a peer cannot send code)."""
    optimizer.step()


def _optimizer_zero_grad(optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
    optimizer.zero_grad(set_to_none)


def _scheduler_step(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Step a learning-rate schedule (without the deprecated epoch argument)."""
    scheduler.step()


def _data_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int = 1,
    shuffle: bool = False,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """Batch a dataset where it lives: no worker processes, samplers or collate functions
    (a peer cannot send code), only the options that are plain values."""
    if not isinstance(dataset, torch.utils.data.Dataset):
        raise TypeError(f"DataLoader needs a Dataset, got {type(dataset).__name__}")
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(batch_size), shuffle=bool(shuffle), drop_last=bool(drop_last)
    )


def _attribute(name: str) -> Callable[[Any], Any]:
    return operator.attrgetter(name)


def _build() -> dict[str, Entry]:
    table: dict[str, Entry] = {}

    def add(
        path: str,
        fn: Any,
        self_type: type | None = None,
        guard: Guard | None = None,
        node_limited: bool = False,
    ):
        assert "__" not in path, path
        table[path] = Entry(path, fn, self_type, guard, node_limited)

    for name in {*_TORCH_FUNCTIONS, *_ELEMENTWISE_BINARY, *_TORCH_GUARDS}:
        if hasattr(torch, name):
            add(f"torch.{name}", getattr(torch, name), guard=_TORCH_GUARDS.get(name))
    for name in {*_TENSOR_METHODS, *_ELEMENTWISE_BINARY, *_TENSOR_GUARDS}:
        if hasattr(torch.Tensor, name):
            add(
                f"torch.Tensor.{name}",
                getattr(torch.Tensor, name),
                torch.Tensor,
                _TENSOR_GUARDS.get(name),
            )
    for name in _TENSOR_ATTRIBUTES:
        add(f"torch.Tensor.{name}", _attribute(name), torch.Tensor)
    for name in _FUNCTIONAL:
        if hasattr(F, name):
            add(f"torch.nn.functional.{name}", getattr(F, name), guard=_FUNCTIONAL_GUARDS.get(name))
    for name in _LAYERS:
        add(f"torch.nn.{name}", getattr(nn, name), guard=guards.layer(getattr(nn, name)))
    add("torch.nn.Module.call", nn.Module.__call__, nn.Module, guards.module_call)
    add(
        "torch.nn.Module.forward",
        lambda module, *a, **k: module(*a, **k),
        nn.Module,
        guards.module_call,
    )
    add("torch.nn.Module.parameters", _module_parameters, nn.Module)
    add("torch.nn.Module.state_dict", _module_state_dict, nn.Module)
    add("torch.nn.Module.load_state_dict", nn.Module.load_state_dict, nn.Module)
    for name in ("train", "eval", "zero_grad", "requires_grad_"):
        add(f"torch.nn.Module.{name}", getattr(nn.Module, name), nn.Module)
    add("torch.nn.Module.training", _attribute("training"), nn.Module)
    add("torch.nn.Parameter", nn.Parameter)
    for name in _OPTIMIZERS:
        add(f"torch.optim.{name}", getattr(torch.optim, name))
    add("torch.optim.Optimizer.step", _optimizer_step, torch.optim.Optimizer)
    add("torch.optim.Optimizer.zero_grad", _optimizer_zero_grad, torch.optim.Optimizer)
    add("tether.optim.set_hyperparameters", _set_hyperparameters, torch.optim.Optimizer)
    add("tether.assign", _assign, torch.Tensor)
    add("torch.autograd.grad", torch.autograd.grad)
    add("torch.autograd.backward", torch.autograd.backward)
    add("torch.optim.lr_scheduler.StepLR", torch.optim.lr_scheduler.StepLR)
    add(
        "torch.optim.lr_scheduler.LRScheduler.step",
        _scheduler_step,
        torch.optim.lr_scheduler.LRScheduler,
    )
    add("tether.data.DataLoader", _data_loader)  # torch's own takes processes and callables
    # Iterating a loader only: iter() of a tensor would hand out rows that share the owner's
    # memory without the read-only mark; a loader's batches are fresh copies.
    add("builtins.iter", iter, torch.utils.data.DataLoader)
    add("builtins.next", next, torch.utils.data.dataloader._BaseDataLoaderIter)
    # Reseeds the node's global generator (shuffling, dropout): reproducible remote training.
    add("torch.manual_seed", torch.manual_seed)
    add("torch.cuda.is_available", torch.cuda.is_available)
    add("torch.cuda.device_count", torch.cuda.device_count)
    for name in _OPERATORS:
        add(f"operator.{name}", getattr(operator, name), guard=_OPERATOR_GUARDS.get(name))
    for name in _BUILTINS:
        add(f"builtins.{name}", getattr(builtins, name), guard=_BUILTIN_GUARDS.get(name))
    return table


ALLOWLIST: dict[str, Entry] = _build()

# For the client: which path names a torch function it was handed (by identity).
PATH_OF: dict[int, str] = {id(e.fn): e.path for e in reversed(ALLOWLIST.values())}


def resolve(path: Any) -> Entry | None:
    """The entry for `path`, or None. Never looks anything up outside the table."""
    return ALLOWLIST.get(path) if isinstance(path, str) else None


_RESERVED = ("torch.", "operator.", "builtins.")


def register(
    path: str,
    fn: Callable[..., Any],
    *,
    self_type: type | None = None,
    guard: Guard | None = None,
    node_limited: bool = False,
    releases: bool = False,
    data_args: tuple[int, ...] = (),
    caller: bool = False,
    approves: bool = False,
) -> Entry:
    """Add a feature's op to the table, from its own package at import time (the node never
    imports a feature). `path`: "tether.<feature>.<name>", without "__", new unless it names
    the same `fn` again (a re-import). `releases=True`: a routine whose result (fit's weights)
    may leave a `training` node when the owner's data reaches it only at `data_args` (or the
    state it keeps there between calls: an object of its `self_type`, which only its
    feature's routines make, such as secure aggregation's MaskingClient).
    `caller=True`: the node hands it who calls (`caller=`, a `tether.node.Caller`).
    `approves=True`: a releasing routine that enforces a standing approval of the owner's (a
    privacy budget): it takes the owner's data only as published objects at `data_args`, is
    handed the caller, returns a `tether.node.Approved`, and its result leaves under every
    policy as a request it accepted itself (see `Node._approve`). It must raise only on
    public facts (its arguments, the budget)."""
    if approves and not (releases and data_args):
        raise ValueError("an approving routine releases, and names where the data goes in")
    if not path.startswith("tether.") or path.startswith(_RESERVED) or "__" in path:
        raise ValueError(f"a feature's op must be named tether.<feature>.<name>: {path!r}")
    known = ALLOWLIST.get(path)
    if known is not None:
        if known.fn is fn:
            return known
        raise ValueError(f"{path!r} is already in the op table, for {known.fn!r}")
    caller = caller or approves
    entry = Entry(
        path, fn, self_type, guard, node_limited, releases, tuple(data_args), caller, approves
    )
    ALLOWLIST[path] = entry
    PATH_OF.setdefault(id(fn), path)
    return entry
