"""The allowlist: the only way a name sent by a peer becomes something a node will run.

Each entry maps a dotted path to an object resolved here, at import time, from real modules.
A peer's string is only ever a key into this table: nothing is looked up with `getattr` on
peer input, dunder names are never entries, and things that read or write files, run code,
or touch raw memory (`torch.load`, `from_file`, storages, `apply_`, hooks, ...) are absent.

Adding an op is adding a name to one of the lists below (and a test that uses it).
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Guard = Callable[[tuple, dict], int]


@dataclass(frozen=True, slots=True)
class Entry:
    """What a path resolves to. `self_type`: the type the first argument must have (methods).
    `guard`: estimates the elements the call will allocate, so huge ones are refused first."""

    path: str
    fn: Callable
    self_type: type | None = None
    guard: Guard | None = None


# ---- allocation guards ----------------------------------------------------------------------


def _numel(shape: Any) -> int:
    if isinstance(shape, torch.Tensor):
        return shape.numel()
    if isinstance(shape, int):
        return shape
    return math.prod(int(d) for d in shape)


def _size_args(args: tuple, kwargs: dict) -> int:
    """Factories: torch.zeros(2, 3) or torch.zeros((2, 3)) or torch.zeros(size=(2, 3))."""
    if "size" in kwargs:
        return _numel(kwargs["size"])
    dims = [a for a in args if isinstance(a, int | tuple | list | torch.Size)]
    if len(dims) == 1 and not isinstance(dims[0], int):
        return _numel(dims[0])
    return math.prod(d for d in dims if isinstance(d, int)) if dims else 1


def _size_after_self(args: tuple, kwargs: dict) -> int:
    """x.new_zeros(size), x.new_full(size, v): the size comes after self."""
    return _size_args(args[1:2], kwargs)


def _randint(args: tuple, kwargs: dict) -> int:
    sizes = [a for a in args if isinstance(a, tuple | list | torch.Size)]
    return _numel(kwargs.get("size", sizes[0] if sizes else ()))


def _range(args: tuple, kwargs: dict) -> int:
    """torch.arange(end), (start, end) or (start, end, step), positional or by keyword."""
    nums = [a for a in args if isinstance(a, int | float)]
    start, end, step = {0: (0, 0, 1), 1: (0, *nums, 1), 2: (*nums, 1)}.get(len(nums), nums[:3])
    start, end = kwargs.get("start", start), kwargs.get("end", end)
    step = kwargs.get("step", step)
    return int(abs((end - start) / step)) + 1 if step else 0


def _steps(args: tuple, kwargs: dict) -> int:
    return int(kwargs.get("steps", args[2] if len(args) > 2 else 100))


def _eye(args: tuple, kwargs: dict) -> int:
    n = args[0] if args else kwargs.get("n", 1)
    return n * (args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n))


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    found = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    for a in (*args, *kwargs.values()):
        if isinstance(a, list | tuple):
            found += [x for x in a if isinstance(x, torch.Tensor)]
    return found


def _broadcast(args: tuple, kwargs: dict) -> int:
    shapes = [t.shape for t in _tensors(args, kwargs)]
    if len({tuple(s) for s in shapes}) <= 1:
        return max((math.prod(s) for s in shapes), default=1)
    return math.prod(torch.broadcast_shapes(*shapes))


def _repeat(args: tuple, kwargs: dict) -> int:
    reps = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
    return args[0].numel() * _numel(reps)


def _expand(args: tuple, kwargs: dict) -> int:
    sizes = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
    return _numel([abs(int(s)) for s in sizes])


def _matmul(args: tuple, kwargs: dict) -> int:
    a, b = _tensors(args, kwargs)[:2]
    rows = a.numel() // max(a.shape[-1], 1) if a.dim() else 1
    cols = b.shape[-1] if b.dim() >= 2 else 1
    batch = math.prod(b.shape[:-2]) if b.dim() > 2 else 1
    return rows * cols * batch


def _linear(args: tuple, kwargs: dict) -> int:
    x, w = _tensors(args, kwargs)[:2]
    return (x.numel() // max(x.shape[-1], 1)) * (w.shape[0] if w.dim() == 2 else 1)


def _product(args: tuple, kwargs: dict) -> int:
    return math.prod(t.numel() for t in _tensors(args, kwargs))


def _unfold(args: tuple, kwargs: dict) -> int:
    x, _, size, step = args[:4]
    return x.numel() * max(int(size), 1) // max(int(step), 1)


def _repeat_interleave(args: tuple, kwargs: dict) -> int:
    reps = args[1] if len(args) > 1 else kwargs.get("repeats", 1)
    return args[0].numel() * (int(reps.max()) if isinstance(reps, torch.Tensor) else int(reps))


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
argmax argmin bincount unique
backward retain_grad
new_tensor
""".split()

_TENSOR_ATTRIBUTES = "grad data T mT H shape dtype requires_grad is_leaf ndim device real imag"
_TENSOR_ATTRIBUTES = _TENSOR_ATTRIBUTES.split()

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

_FACTORIES: dict[str, Guard] = {
    "zeros": _size_args, "ones": _size_args, "empty": _size_args, "full": _size_args,
    "rand": _size_args, "randn": _size_args, "randint": _randint, "randperm": _size_args,
    "arange": _range, "linspace": _steps, "logspace": _steps, "eye": _eye,
}
_GUARDED_TENSOR_METHODS: dict[str, Guard] = {
    "repeat": _repeat, "tile": _repeat, "expand": _expand, "unfold": _unfold,
    "repeat_interleave": _repeat_interleave, "outer": _product, "kron": _product,
    "new_zeros": _size_after_self, "new_ones": _size_after_self,
    "new_empty": _size_after_self, "new_full": _size_after_self,
}
_GUARDED_TORCH_FUNCTIONS: dict[str, Guard] = {
    "tile": _repeat, "repeat_interleave": _repeat_interleave, "outer": _product,
    "kron": _product, "cartesian_prod": _product, "broadcast_to": _expand,
}
_MATMUL_LIKE = {"mm", "bmm", "matmul", "addmm", "mv", "dot"}

_OPERATORS = """
add sub mul truediv floordiv mod pow matmul neg pos abs invert and_ or_ xor
eq ne lt le gt ge getitem setitem lshift rshift
""".split()
_BROADCASTING_OPERATORS = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and_",
                           "or_", "xor", "eq", "ne", "lt", "le", "gt", "ge", "lshift", "rshift"}

_BUILTINS = "float int bool len abs min max round sum list tuple dict str".split()


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


def _attribute(name: str) -> Callable[[Any], Any]:
    return operator.attrgetter(name)


def _build() -> dict[str, Entry]:
    table: dict[str, Entry] = {}

    def add(path: str, fn: Any, self_type: type | None = None, guard: Guard | None = None):
        assert "__" not in path, path
        table[path] = Entry(path, fn, self_type, guard)

    for name in _TORCH_FUNCTIONS + _ELEMENTWISE_BINARY:
        if hasattr(torch, name):
            guard = _broadcast if name in _ELEMENTWISE_BINARY else None
            add(f"torch.{name}", getattr(torch, name),
                guard=_matmul if name in _MATMUL_LIKE else guard)
    for name, guard in {**_FACTORIES, **_GUARDED_TORCH_FUNCTIONS}.items():
        add(f"torch.{name}", getattr(torch, name), guard=guard)
    for name in _TENSOR_METHODS + _ELEMENTWISE_BINARY:
        if hasattr(torch.Tensor, name):
            guard = _broadcast if name.rstrip("_") in _ELEMENTWISE_BINARY else None
            add(f"torch.Tensor.{name}", getattr(torch.Tensor, name), torch.Tensor,
                _matmul if name in _MATMUL_LIKE else guard)
    for name, guard in _GUARDED_TENSOR_METHODS.items():
        add(f"torch.Tensor.{name}", getattr(torch.Tensor, name), torch.Tensor, guard)
    for name in _TENSOR_ATTRIBUTES:
        add(f"torch.Tensor.{name}", _attribute(name), torch.Tensor)
    for name in _FUNCTIONAL:
        if hasattr(F, name):
            add(f"torch.nn.functional.{name}", getattr(F, name),
                guard=_linear if name == "linear" else None)
    for name in _LAYERS:
        add(f"torch.nn.{name}", getattr(nn, name))
    add("torch.nn.Module.call", nn.Module.__call__, nn.Module)
    add("torch.nn.Module.forward", lambda module, *a, **k: module(*a, **k), nn.Module)
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
    add("torch.cuda.is_available", torch.cuda.is_available)
    add("torch.cuda.device_count", torch.cuda.device_count)
    for name in _OPERATORS:
        guard = _broadcast if name in _BROADCASTING_OPERATORS else None
        add(f"operator.{name}", getattr(operator, name),
            guard=_matmul if name == "matmul" else guard)
    for name in _BUILTINS:
        add(f"builtins.{name}", getattr(builtins, name))
    return table


ALLOWLIST: dict[str, Entry] = _build()

# For the client: which path names a torch function it was handed (by identity).
PATH_OF: dict[int, str] = {id(e.fn): e.path for e in reversed(ALLOWLIST.values())}


def resolve(path: Any) -> Entry | None:
    """The entry for `path`, or None. Never looks anything up outside the table."""
    return ALLOWLIST.get(path) if isinstance(path, str) else None
