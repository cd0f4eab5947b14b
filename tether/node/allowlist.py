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
    `guard`: estimates the elements the call will allocate, so huge ones are refused first.
    `node_limited`: the call builds and runs a whole model, so the node hands it its own
    per-result limit as `max_elements=` (a peer may not)."""

    path: str
    fn: Callable
    self_type: type | None = None
    guard: Guard | None = None
    node_limited: bool = False


# ---- allocation guards ----------------------------------------------------------------------
# Each estimates how many elements a call will allocate, from its arguments, before it runs.
# Most are arithmetic (microseconds); rare ops with involved shape rules run on the meta
# device instead, which allocates nothing.


def _numel(shape: Any) -> int:
    if isinstance(shape, torch.Tensor):
        return shape.numel()
    if isinstance(shape, int):
        return shape
    return math.prod(int(d) for d in shape)


def _dims(values: tuple | list) -> list[int]:
    """Sizes given as varargs ints (`zeros(2, 3)`) or as one sequence (`zeros((2, 3))`)."""
    if len(values) == 1 and isinstance(values[0], tuple | list | torch.Size):
        return [int(d) for d in values[0]]
    return [int(d) for d in values]


def _factory(args: tuple, kwargs: dict) -> int:
    """torch.zeros / ones / empty / rand / randn: sizes as varargs, one sequence, or size=."""
    return _numel(kwargs["size"]) if "size" in kwargs else _numel(_dims(args))


def _full(args: tuple, kwargs: dict) -> int:
    return _numel(kwargs.get("size", args[0] if args else ()))


def _randint(args: tuple, kwargs: dict) -> int:
    sizes = [a for a in args if isinstance(a, tuple | list | torch.Size)]
    return _numel(kwargs.get("size", sizes[0] if sizes else ()))


def _randperm(args: tuple, kwargs: dict) -> int:
    return int(kwargs.get("n", args[0] if args else 0))


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


def _new(args: tuple, kwargs: dict) -> int:
    """x.new_zeros(2, 3) / new_zeros((2, 3)) / new_full((2, 3), v): sizes after self."""
    if "size" in kwargs:
        return _numel(kwargs["size"])
    sizes = args[1:]
    if sizes and isinstance(sizes[0], tuple | list | torch.Size):
        return _numel(sizes[0])
    return _numel(_dims(sizes))


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among the arguments and in the lists among them, in order."""
    found = []
    for a in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, list | tuple):
            found += [x for x in a if isinstance(x, torch.Tensor)]
    return found


def _broadcast(args: tuple, kwargs: dict) -> int:
    shapes = [t.shape for t in _tensors(args, kwargs)]
    if len({tuple(s) for s in shapes}) <= 1:
        return max((math.prod(s) for s in shapes), default=1)
    return math.prod(torch.broadcast_shapes(*shapes))


def _repeat(args: tuple, kwargs: dict) -> int:
    return args[0].numel() * _numel(_dims(args[1:]) if args[1:] else kwargs.get("dims", ()))


def _expand(args: tuple, kwargs: dict) -> int:
    return _numel([abs(d) for d in _dims(args[1:])] if args[1:] else kwargs.get("size", ()))


def _matmul_of(a: torch.Tensor, b: torch.Tensor) -> int:
    rows = a.numel() // max(a.shape[-1], 1) if a.dim() else 1
    cols = b.shape[-1] if b.dim() >= 2 else 1
    batch = math.prod(b.shape[:-2]) if b.dim() > 2 else 1
    return rows * cols * batch


def _matmul(args: tuple, kwargs: dict) -> int:
    a, b = _tensors(args, kwargs)[:2]
    return _matmul_of(a, b)


def _addmm(args: tuple, kwargs: dict) -> int:
    base, a, b = _tensors(args, kwargs)[:3]
    return max(_matmul_of(a, b), base.numel())


def _linear(args: tuple, kwargs: dict) -> int:
    x, w = _tensors(args, kwargs)[:2]
    return (x.numel() // max(x.shape[-1], 1)) * (w.shape[0] if w.dim() == 2 else 1)


def _product(args: tuple, kwargs: dict) -> int:
    return math.prod(t.numel() for t in _tensors(args, kwargs))


def _total(args: tuple, kwargs: dict) -> int:
    """cat / stack of a list: the sum of the parts (the same part may be listed many times)."""
    return sum(t.numel() for t in _tensors(args, kwargs))


def _unfold(args: tuple, kwargs: dict) -> int:
    x, _, size, step = args[:4]
    return x.numel() * max(int(size), 1) // max(int(step), 1)


def _repeat_interleave(args: tuple, kwargs: dict) -> int:
    reps = args[1] if len(args) > 1 else kwargs.get("repeats", 1)
    return args[0].numel() * (int(reps.max()) if isinstance(reps, torch.Tensor) else int(reps))


def _index_select(args: tuple, kwargs: dict) -> int:
    x, dim = args[0], int(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    index = kwargs.get("index", args[2] if len(args) > 2 else None)
    return index.numel() * (x.numel() // max(x.shape[dim], 1))


def _pad(args: tuple, kwargs: dict) -> int:
    x, pad = args[0], kwargs.get("pad", args[1] if len(args) > 1 else ())
    shape = list(x.shape)
    for i, (low, high) in enumerate(zip(pad[::2], pad[1::2], strict=True)):
        shape[-1 - i] += int(low) + int(high)
    return _numel([max(d, 0) for d in shape])


def _largest_value(x: torch.Tensor) -> int:
    return int(x.max()) + 1 if x.numel() else 0


def _one_hot(args: tuple, kwargs: dict) -> int:
    x = args[0]
    classes = int(kwargs.get("num_classes", args[1] if len(args) > 1 else -1))
    return x.numel() * (classes if classes >= 0 else _largest_value(x))


def _bincount(args: tuple, kwargs: dict) -> int:
    minlength = int(kwargs.get("minlength", args[2] if len(args) > 2 else 0))
    return max(minlength, _largest_value(args[0]))


def _histc(args: tuple, kwargs: dict) -> int:
    return int(kwargs.get("bins", args[1] if len(args) > 1 else 100))


def _diag(args: tuple, kwargs: dict) -> int:
    x = args[0]
    side = x.numel() + abs(int(kwargs.get("diagonal", args[1] if len(args) > 1 else 0)))
    return side * side if x.dim() == 1 else x.numel()


def _embedding(args: tuple, kwargs: dict) -> int:
    index, weight = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
    return index.numel() * (weight.shape[-1] if isinstance(weight, torch.Tensor) else 1)


def _conv(args: tuple, kwargs: dict) -> int:
    """An upper bound: stride and kernel only shrink the padded input."""
    x, w = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
    padding = kwargs.get("padding", args[4] if len(args) > 4 else 0)
    spatial = list(x.shape[2:]) if x.dim() > w.dim() - 2 else list(x.shape[1:])
    if isinstance(padding, str):
        padding = max(w.shape[2:], default=0)
    pads = list(padding) if isinstance(padding, tuple | list) else [padding] * len(spatial)
    batch = x.shape[0] if x.dim() == w.dim() else 1
    return (
        batch * w.shape[0] * _numel([s + 2 * int(p) for s, p in zip(spatial, pads, strict=False)])
    )


def _as_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, list | tuple):
        return type(value)(_as_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_meta(v) for k, v in value.items()}
    return value


def _elements(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, list | tuple):
        return sum(_elements(v) for v in value)
    return 0


def _dry_run(fn: Callable) -> Guard:
    """Run the op on the meta device: exact output sizes, nothing allocated."""

    def guard(args: tuple, kwargs: dict) -> int:
        return _elements(fn(*_as_meta(args), **_as_meta(kwargs)))

    return guard


def _index(args: tuple, kwargs: dict) -> int:
    """Basic indexing only makes views; indexing with tensors or lists gathers."""
    x, key = args[0], args[1]
    keys = key if isinstance(key, tuple) else (key,)
    if not isinstance(x, torch.Tensor):
        return 1
    if not any(isinstance(k, torch.Tensor | list) for k in keys):
        return x.numel()
    if isinstance(key, torch.Tensor) and x.dim():  # the common case, a batch: x[indices]
        if key.dtype == torch.bool:
            return x.numel()
        return key.numel() * (x.numel() // max(x.shape[0], 1))
    return _dry_run(operator.getitem)(args, kwargs)


def _module_call(args: tuple, kwargs: dict) -> int:
    """A remote module's forward, run with meta parameters and inputs."""
    module = args[0]
    meta_state = {k: _as_meta(v) for k, v in [*module.named_parameters(), *module.named_buffers()]}
    return _elements(
        torch.func.functional_call(module, meta_state, _as_meta(args[1:]), _as_meta(kwargs))
    )


def _layer(cls: type) -> Guard:
    """A layer's parameters and buffers, counted by building it on the meta device."""

    def guard(args: tuple, kwargs: dict) -> int:
        with torch.device("meta"):
            layer = cls(*args, **kwargs)
        return sum(t.numel() for t in (*layer.parameters(), *layer.buffers()))

    return guard


def _python_items(args: tuple, kwargs: dict) -> int:
    """Turning a tensor into Python objects costs ~50 bytes per element, not 4."""
    return sum(16 * t.numel() for t in args if isinstance(t, torch.Tensor))


def _sequence_times(args: tuple, kwargs: dict) -> int:
    """operator.mul: [0] * n makes n items; otherwise it broadcasts like torch.mul."""
    a, b = args[:2]
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, list | tuple | str | bytes) and isinstance(n, int):
            return len(seq) * n
    return _broadcast(args, kwargs)


def _power(args: tuple, kwargs: dict) -> int:
    """Python ints grow without bound: 10 ** 10**9 is a billion digits."""
    a, b = args[:2]
    if isinstance(a, int) and isinstance(b, int):
        return abs(a).bit_length() * max(b, 0) // 64
    return _broadcast(args, kwargs)


def _shift(args: tuple, kwargs: dict) -> int:
    a, b = args[:2]
    if isinstance(a, int) and isinstance(b, int):
        return (abs(a).bit_length() + max(b, 0)) // 64
    return _broadcast(args, kwargs)


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

# Losses that compare their inputs element by element, broadcasting them (the others, such as
# nll_loss with class-index targets, never outgrow their input).
_BROADCASTING_LOSSES = """
mse_loss l1_loss smooth_l1_loss huber_loss binary_cross_entropy binary_cross_entropy_with_logits
kl_div poisson_nll_loss soft_margin_loss margin_ranking_loss hinge_embedding_loss
cosine_similarity pairwise_distance triplet_margin_loss
""".split()
_MATMUL_GUARDS: dict[str, Guard] = {
    "mm": _matmul,
    "bmm": _matmul,
    "matmul": _matmul,
    "mv": _matmul,
    "dot": _matmul,
    "addmm": _addmm,
    "outer": _product,
    "kron": _product,
    "diag": _diag,
    "bincount": _bincount,
    "repeat_interleave": _repeat_interleave,
    "index_select": _index_select,
}
_TORCH_GUARDS: dict[str, Guard] = {
    **{name: _broadcast for name in _ELEMENTWISE_BINARY},
    **_MATMUL_GUARDS,
    "zeros": _factory,
    "ones": _factory,
    "empty": _factory,
    "rand": _factory,
    "randn": _factory,
    "full": _full,
    "randint": _randint,
    "randperm": _randperm,
    "arange": _range,
    "linspace": _steps,
    "logspace": _steps,
    "eye": _eye,
    "tile": _repeat,
    "cartesian_prod": _product,
    "broadcast_to": _expand,
    "cat": _total,
    "concat": _total,
    "stack": _total,
    "hstack": _total,
    "vstack": _total,
    "histc": _histc,
    "dist": _broadcast,
}
_TENSOR_GUARDS: dict[str, Guard] = {
    **{name: _broadcast for name in _ELEMENTWISE_BINARY},
    **{f"{name}_": _broadcast for name in _ELEMENTWISE_BINARY},
    **_MATMUL_GUARDS,
    "repeat": _repeat,
    "tile": _repeat,
    "expand": _expand,
    "unfold": _unfold,
    "new_zeros": _new,
    "new_ones": _new,
    "new_empty": _new,
    "new_full": _new,
    "tolist": _python_items,
}
_FUNCTIONAL_GUARDS: dict[str, Guard] = {
    **{name: _broadcast for name in _BROADCASTING_LOSSES},
    "linear": _linear,
    "bilinear": _dry_run(F.bilinear),
    "conv1d": _conv,
    "conv2d": _conv,
    "conv3d": _conv,
    "conv_transpose1d": _dry_run(F.conv_transpose1d),
    "conv_transpose2d": _dry_run(F.conv_transpose2d),
    "pad": _pad,
    "one_hot": _one_hot,
    "embedding": _embedding,
}

_OPERATORS = """
add sub mul truediv floordiv mod pow matmul neg pos abs invert and_ or_ xor
eq ne lt le gt ge getitem setitem lshift rshift
""".split()
_OPERATOR_GUARDS: dict[str, Guard] = {
    **{
        name: _broadcast
        for name in "add sub truediv floordiv mod and_ or_ xor eq ne lt le gt ge rshift".split()
    },
    "mul": _sequence_times,
    "pow": _power,
    "lshift": _shift,
    "matmul": _matmul,
    "getitem": _index,
}

_BUILTINS = "float int bool len abs min max round sum list tuple dict str".split()
_BUILTIN_GUARDS: dict[str, Guard] = {
    name: _python_items for name in ("list", "tuple", "sum", "min", "max")
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


def _fit(*args: Any, **kwargs: Any) -> dict:
    """Delegated training on the node's data (tether.federated.training.fit)."""
    from tether.federated.training import fit

    return fit(*args, **kwargs)


def _evaluate(*args: Any, **kwargs: Any) -> dict:
    """Delegated evaluation on the node's data (tether.federated.training.evaluate)."""
    from tether.federated.training import evaluate

    return evaluate(*args, **kwargs)


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
        add(f"torch.nn.{name}", getattr(nn, name), guard=_layer(getattr(nn, name)))
    add("torch.nn.Module.call", nn.Module.__call__, nn.Module, _module_call)
    add("torch.nn.Module.forward", lambda module, *a, **k: module(*a, **k), nn.Module, _module_call)
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
    add("tether.federated.fit", _fit, node_limited=True)
    add("tether.federated.evaluate", _evaluate, node_limited=True)
    return table


ALLOWLIST: dict[str, Entry] = _build()

# Calls that read facts about the owner's machine: their results count as the owner's data.
OWNER_FACTS = frozenset(
    {
        "torch.cuda.is_available",
        "torch.cuda.device_count",
        "torch.get_default_dtype",
        "torch.is_grad_enabled",
    }
)

# For the client: which path names a torch function it was handed (by identity).
PATH_OF: dict[int, str] = {id(e.fn): e.path for e in reversed(ALLOWLIST.values())}


def resolve(path: Any) -> Entry | None:
    """The entry for `path`, or None. Never looks anything up outside the table."""
    return ALLOWLIST.get(path) if isinstance(path, str) else None
