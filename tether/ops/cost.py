"""What each aten op will cost, decided from shapes before it runs (issue 22, class 7).

Path-level guards can be routed around: composites, modules, model specs and autograd's
backward all reach the kernels through aten ops that no path names. So the Guard's dispatch
mode calls `Budget.charge` before every aten op, and the op is refused with `LimitError` when a
result would have more than `max_elements` elements or the command would run over its budget
of work or of result objects. Design and measurements: docs/design/owner-control/README.md §5.2.

How `Estimates.cost` finds an op's cost, first rule that applies (`_rule`):
- work that grows faster than the inputs and outputs (`mm`, convolutions, attention, pooling
  windows, distance matrices, sorting): a formula from `flop_registry` or `_FORMULAS`, with
  the output shapes from a meta-device run; such ops without a formula (`linalg_*`, `svd`,
  `qr`, `fft_*`, other conv kernels, ...) are refused (`_NO_FORMULA`);
- ops that return no tensors (`item`, `equal`, in-place `_foreach_*_`): their inputs;
- `Tag.pointwise`: the broadcast of the inputs' shapes, arithmetic only;
- views: no allocation, but their logical size counts against `max_elements`;
- `Tag.dynamic_output_shape` (`nonzero`, `masked_select`, `unique`, bool-mask `index`, ...):
  an upper bound from the inputs (`_DYNAMIC`), refused where there is none;
- ops that return a list cut from one tensor (`split`, `unbind`): the count, before any run;
- everything else: a meta-device run for the output sizes; work = inputs + outputs.
A meta run allocates nothing: tensor arguments become meta tensors and device arguments the
meta device. Costs that come from shapes alone are memoized (a training loop repeats its
shapes, and a meta run costs 20-200 µs). Any failure while estimating refuses the op.

Long because the rules and their formulas are one table, read and extended together.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch
from torch._ops import OpOverload
from torch.utils.flop_counter import flop_registry

from tether.errors import LimitError

aten = torch.ops.aten
_META = torch.device("meta")


def _overloads(*packets: Any) -> frozenset[OpOverload]:
    return frozenset(getattr(p, name) for p in packets for name in p.overloads())


# Ops whose result is memory nothing has written yet: the Guard zeroes their results.
UNINITIALIZED = _overloads(
    aten.empty,
    aten.empty_like,
    aten.new_empty,
    aten.empty_strided,
    aten.new_empty_strided,
    aten.empty_permuted,
)
# Ops that grow a tensor in place and leave the added part uninitialized: zeroing the whole
# result would erase the part they keep, so these need the Guard's own care.
RESIZES = _overloads(aten.resize_, aten.resize_as_, aten._resize_output_)


class Cost(NamedTuple):
    """`elements`: the largest result's element count (a view's logical size included);
    `work`: an upper bound on the op's arithmetic and memory traffic, in element operations;
    `results`: the objects it returns (a tensor object takes ~600 bytes, a view as well)."""

    elements: int
    work: int
    results: int = 1


class Budget:
    """One command's allowance: no result over `max_elements` elements; at most `max_flops`
    element operations and `max_results` returned objects in all. The last bounds composites
    that loop over cheap views (`tensor_split(x, 10**8)` makes 10**8 slices, each an object).
    The Guard makes one per command and calls `charge` before each aten op it runs."""

    def __init__(
        self,
        max_elements: int,
        max_flops: int,
        max_results: int = 2**20,
        estimates: Estimates | None = None,
    ) -> None:
        self.max_elements = max_elements
        self.max_flops = max_flops
        self.max_results = max_results
        self.flops_left = max_flops
        self.results_left = max_results
        self.estimates = estimates or ESTIMATES

    def charge(self, func: OpOverload, args: tuple, kwargs: dict | None = None) -> None:
        """Estimate the op from shapes without running it. LimitError, naming the op and the
        limit but never a size or a value, if a result would be over `max_elements` or the op
        would overdraw what is left; otherwise take its cost from what is left."""
        cost = self.estimates.cost(func, args, kwargs or {})
        if cost.elements > self.max_elements:
            raise LimitError(
                f"{func}: a result would have more than max_elements={self.max_elements} elements"
            )
        if cost.work > self.flops_left:
            raise LimitError(
                f"{func}: over this command's budget of max_flops={self.max_flops} operations"
            )
        if cost.results > self.results_left:
            raise LimitError(
                f"{func}: over this command's budget of max_results={self.max_results} objects"
            )
        self.flops_left -= cost.work
        self.results_left -= cost.results


class Estimates:
    """The costs of the ops a node has seen, shared by all its commands (thread-safe).

    A cost that depends on shapes alone is memoized by (op, shapes, strides, dtypes, other
    arguments). The memo's keys hold at most `capacity` tensors and items in all, the oldest
    entries going first, so a peer that sends ever new shapes cannot grow it without bound."""

    def __init__(self, capacity: int = 2**16) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._memo: dict[Hashable, tuple[Cost, int]] = {}
        self._weight = 0
        self._rules: dict[OpOverload, _Rule] = {}
        self._lock = threading.Lock()

    def cost(self, func: OpOverload, args: tuple, kwargs: dict) -> Cost:
        """This op's cost, or LimitError if it cannot be bounded. The message names the op
        only; a shape rule's own error, which may quote sizes, is chained as `__cause__`."""
        try:
            rule = self._rules.get(func)
            if rule is None:
                rule = self._rules[func] = _rule(func)
            if rule.kind == _POINTWISE:
                return _broadcast(args, kwargs, rule.outs)
            if rule.kind == _SUBVIEW:
                return Cost(args[0].numel(), 1)
            if rule.kind == _NO_TENSORS:
                return Cost(0, 1 + _numel(args) + _numel(tuple(kwargs.values())))
            if rule.kind == _REFUSED:
                raise LimitError(f"{func}: no cost formula for this op yet; refused")
            return self._memoized(func, rule, args, kwargs)
        except LimitError:
            raise
        except Exception as exc:
            raise LimitError(f"cannot bound the cost of {func}; refused") from exc

    def _memoized(self, func: OpOverload, rule: _Rule, args: tuple, kwargs: dict) -> Cost:
        leaves = [0]
        key: Hashable | None
        try:
            key = (func, _freeze(args, leaves), _freeze(tuple(kwargs.items()), leaves))
        except _Unmemoizable:
            key = None
        if key is not None:
            found = self._memo.get(key)
            if found is not None:
                self.hits += 1
                return found[0]
        self.misses += 1
        cost, shapes_only = _estimate(func, rule, args, kwargs)
        if key is not None and shapes_only:
            with self._lock:
                if key not in self._memo:
                    while self._memo and self._weight + leaves[0] > self.capacity:
                        self._weight -= self._memo.pop(next(iter(self._memo)))[1]
                    self._memo[key] = (cost, leaves[0])
                    self._weight += leaves[0]
        return cost


ESTIMATES = Estimates()  # the process's memo, used by every Budget not given another


# -- which rule an op follows ----------------------------------------------------------------

_POINTWISE, _SUBVIEW, _NO_TENSORS, _REFUSED, _FORMULA, _VIEW = range(6)
_STRIDED_VIEW, _DYNAMIC_SIZE, _INDEX_PUT, _SPLIT, _GENERAL = range(6, 11)


class _Rule(NamedTuple):
    kind: int
    formula: Formula | None = None
    bound: Bound | None = None
    outs: frozenset[str] = frozenset()  # out= arguments: not inputs of a broadcast


# Work that grows faster than inputs and outputs, with no formula here or in flop_registry:
# refused until one is written (op names, without the overload).
_NO_FORMULA = re.compile(
    r"^_?linalg_(?!vector_norm$|cross$)"  # factorizations, solves, inverses: n^3 on n^2
    r"|^(cholesky|cholesky_inverse|cholesky_solve|_cholesky_solve_helper|svd|qr|geqrf|orgqr"
    r"|ormqr|_lu_with_info|lu_solve|lu_unpack|triangular_solve|inverse|det|logdet|slogdet"
    r"|pinverse|matrix_exp|matrix_exp_backward|_spsolve)$"
    r"|^_?fft_(?!fftfreq$|rfftfreq$|fftshift$|ifftshift$)|^(stft|istft)$"
    r"|conv(?!ert)"  # convolution kernels other than the registry's
    r"|mm(_|$)|matmul|^_trilinear$|^mkldnn_linear|^fbgemm_"  # products other than the registry's
    r"|attention|transformer"
    r"|rnn|lstm|gru"
)
# Views no larger than their input, by arithmetic: a loop of slices with ever new bounds would
# otherwise miss the memo at every one. (view.dtype can grow, so only view.default.)
_SUBVIEWS = frozenset({aten.view.default}) | _overloads(
    aten.slice, aten.select, aten.narrow, aten.diagonal, aten.t, aten.transpose, aten.permute,
    aten.squeeze, aten.unsqueeze, aten.detach, aten.alias, aten.lift_fresh, aten._reshape_alias,
    aten.real, aten.imag, aten._conj, aten._neg_view,
)  # fmt: skip
# Ops that return a list of tensors cut from one (names without "unsafe_" and "_copy").
_SPLITS = frozenset(
    "split split_with_sizes chunk tensor_split hsplit vsplit dsplit unbind where nonzero_numpy"
    " gradient".split()
)
_WINDOWED = ("pool", "im2col", "col2im")  # with a kernel_size argument: `_window`
_INDEX_PUTS = (aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index_put)


def _rule(func: OpOverload) -> _Rule:
    packet, schema = func.overloadpacket, func._schema
    name = packet.__name__
    if packet in _FORMULAS:
        return _Rule(_FORMULA, formula=_FORMULAS[packet])
    if any(w in name for w in _WINDOWED) and any(a.name == "kernel_size" for a in schema.arguments):
        return _Rule(_FORMULA, formula=_window)
    if func.namespace == "aten" and _NO_FORMULA.search(name):
        return _Rule(_REFUSED)
    if not any("Tensor" in str(r.type) for r in schema.returns):
        return _Rule(_NO_TENSORS)
    if torch.Tag.pointwise in func.tags:
        return _Rule(_POINTWISE, outs=frozenset(a.name for a in schema.arguments if a.is_out))
    if func in _SUBVIEWS and all(r.alias_info is not None for r in schema.returns):
        return _Rule(_SUBVIEW)
    if packet in (aten.as_strided, aten.as_strided_):
        return _Rule(_STRIDED_VIEW)
    if func is aten.index.Tensor:
        return _Rule(_GENERAL)  # its masks become positions first (`_mask_as_positions`)
    if torch.Tag.dynamic_output_shape in func.tags:
        bound = _DYNAMIC.get(packet)
        return _Rule(_DYNAMIC_SIZE, bound=bound) if bound else _Rule(_REFUSED)
    if packet in _INDEX_PUTS:
        return _Rule(_INDEX_PUT)
    if any(isinstance(r.type, torch.ListType) for r in schema.returns) and not any(
        isinstance(a.type, torch.ListType) and "Tensor" in str(a.type) for a in schema.arguments
    ):  # how many results comes from sizes or numbers: count them before anything runs
        split = name.removeprefix("unsafe_").removesuffix("_copy") in _SPLITS
        return _Rule(_SPLIT) if split else _Rule(_REFUSED)
    if all(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
        return _Rule(_VIEW)
    return _Rule(_GENERAL)


def _broadcast(args: tuple, kwargs: dict, outs: frozenset[str]) -> Cost:
    """A pointwise op's result has the broadcast shape of its inputs; one operation each."""
    shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
    if kwargs:
        shapes += [v.shape for k, v in kwargs.items() if k not in outs and _is_tensor(v)]
    if not shapes:
        return Cost(1, 1)
    first = shapes[0]
    same = all(s == first for s in shapes)
    n = math.prod(first) if same else math.prod(_broadcast_shape(shapes))
    return Cost(n, max(n, 1))


def _broadcast_shape(shapes: list[torch.Size]) -> list[int]:
    """torch.broadcast_shapes, in a quarter of its time."""
    out = [1] * max(len(s) for s in shapes)
    for shape in shapes:
        for i, d in enumerate(shape, len(out) - len(shape)):
            if d != 1:
                if out[i] == 1:
                    out[i] = d
                elif out[i] != d:
                    raise ValueError("shapes do not broadcast")
    return out


def _estimate(func: OpOverload, rule: _Rule, args: tuple, kwargs: dict) -> tuple[Cost, bool]:
    """A memo miss: (cost, whether it came from shapes alone and may be memoized)."""
    inputs = _numel(args) + _numel(tuple(kwargs.values()))
    if rule.kind == _DYNAMIC_SIZE:
        assert rule.bound is not None
        bound, shapes_only = rule.bound(func, args, kwargs)
        work = 1 + inputs + 3 * bound * _log2(bound)
        return Cost(bound, work, len(func._schema.returns)), shapes_only
    if rule.kind == _STRIDED_VIEW:
        return Cost(math.prod(int(d) for d in _argument(func, args, kwargs, "size")), 1), True
    if rule.kind == _INDEX_PUT:  # writes as many elements as the same index would read
        self, indices = args[0], _mask_as_positions(list(args[1]))
        written = _numel(_run_meta(aten.index.Tensor, (self, indices), {}))
        in_place = func.overloadpacket.__name__.endswith("_")
        return Cost(0 if in_place else self.numel(), 1 + inputs + written), True
    if rule.kind == _SPLIT:  # each part is at most the whole
        count = _result_count(func, args, kwargs)
        return Cost(args[0].numel(), 1 + inputs + count, count), True
    if func is aten.index.Tensor:
        args = (args[0], _mask_as_positions(list(args[1])), *args[2:])
    out = _run_meta(func, args, kwargs)
    results = len(_tensors((out,), {}))
    if rule.kind == _VIEW:
        return Cost(_largest(out), results, results), True
    work = 1 + inputs + _numel(out)
    if rule.formula is not None:
        work += rule.formula(func, args, kwargs, out)
    return Cost(_largest(out), work, results), True


# -- formulas: (func, args, kwargs, meta output) -> work beyond the inputs and outputs --------

Formula = Callable[[OpOverload, tuple, dict, Any], int]


def _registry(packet: Any) -> Formula:
    """A flop_counter formula; it reads only shapes (its wrapper maps tensors to shapes)."""
    formula = flop_registry[packet]
    return lambda func, args, kwargs, out: int(formula(*args, **kwargs, out_val=out))


def _window(func: OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    """Pooling, im2col, col2im: each element of the larger side meets a whole kernel window."""
    kernel = [int(k) for k in _argument(func, args, kwargs, "kernel_size")]
    name = func.overloadpacket.__name__
    spatial = 3 if "3d" in name else 1 if "1d" in name else 2
    volume = kernel[0] ** spatial if len(kernel) == 1 else math.prod(kernel)
    return volume * max(_largest(args), _largest(out))


def _distances(x_name: str) -> Formula:
    """cdist / pdist kernels: every pair of rows meets over the feature dimension."""

    def formula(func: OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
        features = _argument(func, args, kwargs, x_name).shape[-1]
        return 3 * features * max(_largest(args), _largest(out))

    return formula


def _sorting(func: OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    n = max(_largest(args), _largest(out))
    return n * _log2(n)


def _filled(func: OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    """index_fill: each index fills a whole slice, however often it repeats."""
    self, dim, index = args[0], int(args[1]), args[2]
    return index.numel() * (self.numel() // max(self.shape[dim], 1) if self.dim() else 1)


def _bags(func: OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    """embedding_bag and its kin: each index reads or writes one embedding row."""
    width = max((t.shape[-1] for t in _tensors(args, kwargs) if t.dim() >= 2), default=1)
    return _argument(func, args, kwargs, "indices").numel() * width


def _label_pairs(func: OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    """multilabel_margin_loss: every target label meets every class."""
    width = max((t.shape[-1] for t in _tensors(args, kwargs) if t.dim()), default=1)
    return _largest(args) * width


def _recurrent(passes: int) -> Formula:
    """mkldnn's LSTM layer: every time step multiplies by both weight matrices."""

    def formula(func: OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
        steps = args[0].numel() // max(args[0].shape[-1], 1)
        return passes * 2 * steps * (args[1].numel() + args[2].numel())

    return formula


def _each(names: str, formula: Formula) -> dict[Any, Formula]:
    return {getattr(aten, name): formula for name in names.split()}


_FORMULAS: dict[Any, Formula] = {
    **{p: _registry(p) for p in flop_registry if isinstance(p, torch._ops.OpOverloadPacket)},
    # in-place and fused forms of the registry's products
    aten.addmm_: _registry(aten.addmm),
    aten._addmm_activation: _registry(aten.addmm),
    aten.baddbmm_: _registry(aten.baddbmm),
    aten.addbmm: _registry(aten.baddbmm),
    aten.addbmm_: _registry(aten.baddbmm),
    # the CPU attention kernels take the arguments of the registry's flash attention
    aten._scaled_dot_product_flash_attention_for_cpu: _registry(
        aten._scaled_dot_product_flash_attention
    ),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _registry(
        aten._scaled_dot_product_flash_attention_backward
    ),
    **_each("_cdist_forward _cdist_backward _euclidean_dist", _distances("x1")),
    **_each("_pdist_forward _pdist_backward", _distances("self")),
    aten.mkldnn_rnn_layer: _recurrent(1),
    aten.mkldnn_rnn_layer_backward: _recurrent(2),
    **_each("index_fill index_fill_", _filled),
    **_each("multilabel_margin_loss_forward multilabel_margin_loss_backward", _label_pairs),
    **_each(
        "_embedding_bag _embedding_bag_forward_only _embedding_bag_backward embedding_renorm_"
        " _embedding_bag_dense_backward _embedding_bag_per_sample_weights_backward",
        _bags,
    ),
    **_each(
        "sort argsort msort topk kthvalue median nanmedian mode searchsorted bucketize"
        " histogram multinomial",
        _sorting,
    ),
}


# -- ops whose output size depends on values -------------------------------------------------

# (func, args, kwargs) -> (bound on the largest result, whether it came from shapes alone)
Bound = Callable[[OpOverload, tuple, dict], tuple[int, bool]]


def _every_element(func: OpOverload, args: tuple, kwargs: dict) -> tuple[int, bool]:
    """nonzero / argwhere: one row of coordinates per element at most."""
    return args[0].numel() * max(args[0].dim(), 1), True


def _masked(func: OpOverload, args: tuple, kwargs: dict) -> tuple[int, bool]:
    self, mask = _argument(func, args, kwargs, "self"), _argument(func, args, kwargs, "mask")
    return math.prod(_broadcast_shape([self.shape, mask.shape])), True


def _unique(func: OpOverload, args: tuple, kwargs: dict) -> tuple[int, bool]:
    return args[0].numel(), True


def _repeated(func: OpOverload, args: tuple, kwargs: dict) -> tuple[int, bool]:
    """repeat_interleave(repeats): the caller's output_size, else count x largest repeat in
    Python ints (their sum in int64, as torch takes it, could wrap around)."""
    size = _argument(func, args, kwargs, "output_size")
    if size is not None:
        return int(size), True
    repeats = args[0]
    return (repeats.numel() * max(int(repeats.max()), 0) if repeats.numel() else 0), False


def _counted(func: OpOverload, args: tuple, kwargs: dict) -> tuple[int, bool]:
    """bincount: a bin per value up to the largest, read from the input as torch reads it."""
    x, minlength = args[0], int(_argument(func, args, kwargs, "minlength"))
    return max(minlength, int(x.max()) + 1 if x.numel() else 0), False


_DYNAMIC: dict[Any, Bound] = {
    aten.nonzero: _every_element,
    aten.argwhere: _every_element,
    aten.masked_select: _masked,
    **{p: _unique for p in (aten._unique, aten._unique2, aten.unique_consecutive)},
    **{p: _unique for p in (aten.unique_dim, aten.unique_dim_consecutive)},
    aten.repeat_interleave: _repeated,
    aten.bincount: _counted,
}


def _mask_as_positions(indices: list) -> list:
    """index.Tensor's boolean masks as the long indices nonzero() makes of them, at their
    largest: a k-dimensional mask of n elements selects at most n positions in its k dims."""
    out: list = []
    for index in indices:
        if isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8):
            if index.dim() == 0:
                raise ValueError("a zero-dimensional mask")
            out += [torch.empty(index.numel(), dtype=torch.long, device=_META)] * index.dim()
        else:
            out.append(index)
    return out


def _result_count(func: OpOverload, args: tuple, kwargs: dict) -> int:
    """How many tensors a split makes, from its arguments (never by running it)."""
    name = func.overloadpacket.__name__.removeprefix("unsafe_").removesuffix("_copy")
    self = args[0]
    if name == "unbind":
        return self.shape[int(_argument(func, args, kwargs, "dim"))]
    if name in ("where", "nonzero_numpy", "gradient"):
        return max(self.dim(), 1)
    how = args[1]  # split_size, split_sizes, chunks, sections or indices
    if isinstance(how, int) and name == "split":
        size = self.shape[int(_argument(func, args, kwargs, "dim"))]
        return -(-size // how) if how > 0 else 1
    if isinstance(how, int):
        return how
    if isinstance(how, list | tuple):
        return len(how) + 1
    raise ValueError("the number of results depends on values")


# -- arguments: memo keys, meta copies, lookups ----------------------------------------------

_ATOMS = frozenset({
    type(None), bool, int, float, complex, str, torch.Size,
    torch.dtype, torch.device, torch.layout, torch.memory_format,
})  # fmt: skip
_KEY_LEAVES = 4096  # longer argument lists (a cat of thousands) are estimated, not memoized


class _Unmemoizable(Exception):
    """An argument the memo cannot key: estimate without the memo."""


def _freeze(value: Any, leaves: list[int]) -> Hashable:
    """A memo key for an argument: shape, strides and dtype of a tensor, other values as they
    are. `leaves` counts the tensors and items: the entry's weight in the memo."""
    leaves[0] += 1
    if leaves[0] > _KEY_LEAVES:
        raise _Unmemoizable
    kind = type(value)
    if kind in _ATOMS:
        if kind is str:
            leaves[0] += len(value) // 64  # a long string weighs what it takes
        return value
    if kind is list or kind is tuple:
        return tuple([_freeze(v, leaves) for v in value])
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise ValueError("not a strided tensor")
        return (value.shape, value.stride(), value.dtype)
    if isinstance(value, torch.Generator):
        return torch.Generator  # which generator never changes a size
    raise _Unmemoizable


def _as_meta(value: Any, made: dict[int, torch.Tensor]) -> Any:
    """The argument for a meta run, where nothing can allocate real memory. `made`: one meta
    tensor per distinct tensor (a list may name the same tensor many times)."""
    if isinstance(value, torch.Tensor):
        meta = made.get(id(value))
        if meta is None:
            if value.layout != torch.strided:
                raise ValueError("not a strided tensor")
            meta = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=_META)
            made[id(value)] = meta
        return meta
    if isinstance(value, torch.device):
        return _META
    if isinstance(value, torch.Generator):
        return None
    if isinstance(value, list | tuple) and not isinstance(value, torch.Size):
        return type(value)(_as_meta(v, made) for v in value)
    return value


def _run_meta(func: OpOverload, args: tuple, kwargs: dict) -> Any:
    made: dict[int, torch.Tensor] = {}
    meta_kwargs = {k: _as_meta(v, made) for k, v in kwargs.items()}
    if any(a.name == "device" and a.kwarg_only for a in func._schema.arguments):
        meta_kwargs["device"] = _META  # a factory's default device would be the CPU
    if "pin_memory" in meta_kwargs:
        meta_kwargs["pin_memory"] = False
    out = func(*_as_meta(args, made), **meta_kwargs)
    if any(t.device != _META for t in _tensors((out,), {})):
        raise ValueError("a meta run returned real tensors")
    return out


def _argument(func: OpOverload, args: tuple, kwargs: dict, name: str) -> Any:
    """An argument by its schema name, wherever the dispatcher put it, else its default."""
    for i, a in enumerate(func._schema.arguments):
        if a.name == name:
            if i < len(args) and not a.kwarg_only:
                return args[i]
            return kwargs.get(name, a.default_value if a.has_default_value() else None)
    raise ValueError(f"no argument {name}")


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among the arguments and in the lists among them."""
    found: list[torch.Tensor] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, list | tuple):
            found += [t for t in a if isinstance(t, torch.Tensor)]
    return found


def _numel(value: Any) -> int:
    """Elements of every tensor in a (nested) argument or result."""
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, list | tuple):
        return sum(_numel(v) for v in value)
    return 0


def _largest(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, list | tuple):
        return max((_largest(v) for v in value), default=0)
    return 0


def _log2(n: int) -> int:
    return max(n, 2).bit_length()
