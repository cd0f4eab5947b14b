"""Allocation guards: each estimates how many elements a call will allocate, from its
arguments, before it runs, so that a huge one is refused first.

Most are arithmetic (microseconds); rare ops with involved shape rules run on the meta device
instead, which allocates nothing. Pure functions of `(args, kwargs) -> int`; the op table
(`tether.ops.table`) names one per op that can outgrow its inputs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, cast

import torch

from tether.errors import LimitError

Guard = Callable[[tuple, dict], int]


def numel(shape: Any) -> int:
    if isinstance(shape, torch.Tensor):
        return shape.numel()
    if isinstance(shape, int):
        return shape
    return math.prod(int(d) for d in shape)


def dims(values: tuple | list) -> list[int]:
    """Sizes given as varargs ints (`zeros(2, 3)`) or as one sequence (`zeros((2, 3))`)."""
    if len(values) == 1 and isinstance(values[0], tuple | list | torch.Size):
        return [int(d) for d in values[0]]
    return [int(d) for d in values]


def factory(args: tuple, kwargs: dict) -> int:
    """torch.zeros / ones / empty / rand / randn: sizes as varargs, one sequence, or size=."""
    return numel(kwargs["size"]) if "size" in kwargs else numel(dims(args))


def full(args: tuple, kwargs: dict) -> int:
    return numel(kwargs.get("size", args[0] if args else ()))


def randint(args: tuple, kwargs: dict) -> int:
    sizes = [a for a in args if isinstance(a, tuple | list | torch.Size)]
    return numel(kwargs.get("size", sizes[0] if sizes else ()))


def randperm(args: tuple, kwargs: dict) -> int:
    return int(kwargs.get("n", args[0] if args else 0))


def range_(args: tuple, kwargs: dict) -> int:
    """torch.arange(end), (start, end) or (start, end, step), positional or by keyword."""
    nums = [a for a in args if isinstance(a, int | float)]
    start, end, step = {0: (0, 0, 1), 1: (0, *nums, 1), 2: (*nums, 1)}.get(len(nums), nums[:3])
    start, end = kwargs.get("start", start), kwargs.get("end", end)
    step = kwargs.get("step", step)
    return int(abs((end - start) / step)) + 1 if step else 0


def steps(args: tuple, kwargs: dict) -> int:
    return int(kwargs.get("steps", args[2] if len(args) > 2 else 100))


def eye(args: tuple, kwargs: dict) -> int:
    n = args[0] if args else kwargs.get("n", 1)
    return n * (args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n))


def new(args: tuple, kwargs: dict) -> int:
    """x.new_zeros(2, 3) / new_zeros((2, 3)) / new_full((2, 3), v): sizes after self."""
    if "size" in kwargs:
        return numel(kwargs["size"])
    sizes = args[1:]
    if sizes and isinstance(sizes[0], tuple | list | torch.Size):
        return numel(sizes[0])
    return numel(dims(sizes))


def tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among the arguments and in the lists among them, in order."""
    found = []
    for a in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, list | tuple):
            found += [x for x in a if isinstance(x, torch.Tensor)]
    return found


def broadcast(args: tuple, kwargs: dict) -> int:
    shapes = [t.shape for t in tensors(args, kwargs)]
    if len({tuple(s) for s in shapes}) <= 1:
        return max((math.prod(s) for s in shapes), default=1)
    return math.prod(torch.broadcast_shapes(*shapes))


def repeat(args: tuple, kwargs: dict) -> int:
    return args[0].numel() * numel(dims(args[1:]) if args[1:] else kwargs.get("dims", ()))


def expand(args: tuple, kwargs: dict) -> int:
    return numel([abs(d) for d in dims(args[1:])] if args[1:] else kwargs.get("size", ()))


def matmul_of(a: torch.Tensor, b: torch.Tensor) -> int:
    rows = a.numel() // max(a.shape[-1], 1) if a.dim() else 1
    cols = b.shape[-1] if b.dim() >= 2 else 1
    batch = math.prod(b.shape[:-2]) if b.dim() > 2 else 1
    return rows * cols * batch


def matmul(args: tuple, kwargs: dict) -> int:
    a, b = tensors(args, kwargs)[:2]
    return matmul_of(a, b)


def addmm(args: tuple, kwargs: dict) -> int:
    base, a, b = tensors(args, kwargs)[:3]
    return max(matmul_of(a, b), base.numel())


def linear(args: tuple, kwargs: dict) -> int:
    x, w = tensors(args, kwargs)[:2]
    return (x.numel() // max(x.shape[-1], 1)) * (w.shape[0] if w.dim() == 2 else 1)


def product(args: tuple, kwargs: dict) -> int:
    return math.prod(t.numel() for t in tensors(args, kwargs))


def total(args: tuple, kwargs: dict) -> int:
    """cat / stack of a list: the sum of the parts (the same part may be listed many times)."""
    return sum(t.numel() for t in tensors(args, kwargs))


def unfold(args: tuple, kwargs: dict) -> int:
    x, _, size, step = args[:4]
    return x.numel() * max(int(size), 1) // max(int(step), 1)


def repeat_interleave(args: tuple, kwargs: dict) -> int:
    reps = args[1] if len(args) > 1 else kwargs.get("repeats", 1)
    return args[0].numel() * (int(reps.max()) if isinstance(reps, torch.Tensor) else int(reps))


def index_select(args: tuple, kwargs: dict) -> int:
    x, dim = args[0], int(kwargs.get("dim", args[1] if len(args) > 1 else 0))
    index: Any = kwargs.get("index", args[2] if len(args) > 2 else None)  # None: refused
    return index.numel() * (x.numel() // max(x.shape[dim], 1))


def pad(args: tuple, kwargs: dict) -> int:
    x, pad = args[0], kwargs.get("pad", args[1] if len(args) > 1 else ())
    shape = list(x.shape)
    for i, (low, high) in enumerate(zip(pad[::2], pad[1::2], strict=True)):
        shape[-1 - i] += int(low) + int(high)
    return numel([max(d, 0) for d in shape])


def largest_value(x: torch.Tensor) -> int:
    return int(x.max()) + 1 if x.numel() else 0


def one_hot(args: tuple, kwargs: dict) -> int:
    x = args[0]
    classes = int(kwargs.get("num_classes", args[1] if len(args) > 1 else -1))
    return x.numel() * (classes if classes >= 0 else largest_value(x))


def bincount(args: tuple, kwargs: dict) -> int:
    minlength = int(kwargs.get("minlength", args[2] if len(args) > 2 else 0))
    return max(minlength, largest_value(args[0]))


def histc(args: tuple, kwargs: dict) -> int:
    return int(kwargs.get("bins", args[1] if len(args) > 1 else 100))


def diag(args: tuple, kwargs: dict) -> int:
    x = args[0]
    side = x.numel() + abs(int(kwargs.get("diagonal", args[1] if len(args) > 1 else 0)))
    return side * side if x.dim() == 1 else x.numel()


def embedding(args: tuple, kwargs: dict) -> int:
    index, weight = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
    return index.numel() * (weight.shape[-1] if isinstance(weight, torch.Tensor) else 1)


def conv(args: tuple, kwargs: dict) -> int:
    """An upper bound: stride and kernel only shrink the padded input."""
    x, w = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
    w = cast(Any, w)  # a peer's arguments: whatever fails here refuses the call
    padding = kwargs.get("padding", args[4] if len(args) > 4 else 0)
    spatial = list(x.shape[2:]) if x.dim() > w.dim() - 2 else list(x.shape[1:])
    if isinstance(padding, str):
        padding = max(w.shape[2:], default=0)
    pads = list(padding) if isinstance(padding, tuple | list) else [padding] * len(spatial)
    batch = x.shape[0] if x.dim() == w.dim() else 1
    return batch * w.shape[0] * numel([s + 2 * int(p) for s, p in zip(spatial, pads, strict=False)])


def as_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, list | tuple):
        return type(value)(as_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: as_meta(v) for k, v in value.items()}
    return value


def elements(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, list | tuple):
        return sum(elements(v) for v in value)
    return 0


def dry_run(fn: Callable) -> Guard:
    """Run the op on the meta device: exact output sizes, nothing allocated."""

    def guard(args: tuple, kwargs: dict) -> int:
        return elements(fn(*as_meta(args), **as_meta(kwargs)))

    return guard


def index(args: tuple, kwargs: dict) -> int:
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
    return dry_run(operator.getitem)(args, kwargs)


def module_call(args: tuple, kwargs: dict) -> int:
    """A remote module's forward, run with meta parameters and inputs."""
    module = args[0]
    meta_state = {k: as_meta(v) for k, v in [*module.named_parameters(), *module.named_buffers()]}
    return elements(
        torch.func.functional_call(module, meta_state, as_meta(args[1:]), as_meta(kwargs))
    )


def layer(cls: type) -> Guard:
    """A layer's parameters and buffers, counted by building it on the meta device."""

    def guard(args: tuple, kwargs: dict) -> int:
        with torch.device("meta"):
            layer = cls(*args, **kwargs)
        return sum(t.numel() for t in (*layer.parameters(), *layer.buffers()))

    return guard


def python_items(args: tuple, kwargs: dict) -> int:
    """Turning a tensor into Python objects costs ~50 bytes per element, not 4."""
    return sum(16 * t.numel() for t in args if isinstance(t, torch.Tensor))


# ---- Python ints ------------------------------------------------------------------------------
# A Python int grows without bound (`3 ** (2 * 10**7)` holds the GIL for seconds, `1 << 2**29` is
# 67 MB): every op that can make one bounds its bit length before it runs, and the node's store
# refuses any larger int that some other path made.

MAX_INT_BITS = 4096


def _bounded_int(bits: int, what: str) -> int:
    """One element, if an int of `bits` bits is within MAX_INT_BITS; raises LimitError if not."""
    if bits > MAX_INT_BITS:
        raise LimitError(
            f"{what} would be a Python int of about {bits:,} bits; this node allows "
            f"{MAX_INT_BITS:,}"
        )
    return 1


def _ints(args: tuple) -> bool:
    return len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], int)


def plus(args: tuple, kwargs: dict) -> int:
    """operator.add / sub: ints grow by a bit; otherwise it broadcasts like torch.add."""
    if _ints(args):
        a, b = args[:2]
        return _bounded_int(max(abs(a).bit_length(), abs(b).bit_length()) + 1, "the sum")
    return broadcast(args, kwargs)


def sequence_times(args: tuple, kwargs: dict) -> int:
    """operator.mul: ints add their bit lengths; [0] * n makes n items; otherwise it
    broadcasts like torch.mul."""
    a, b = args[:2]
    if _ints(args):
        return _bounded_int(abs(a).bit_length() + abs(b).bit_length(), "the product")
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, list | tuple | str | bytes) and isinstance(n, int):
            return len(seq) * n
    return broadcast(args, kwargs)


def power(args: tuple, kwargs: dict) -> int:
    """operator.pow: `a ** b` of ints has b * log2(a) bits, plus one (0, 1 and -1 stay small;
    a negative `b` makes a float)."""
    a, b = args[:2]
    if _ints(args):
        bits = 1 if abs(a) <= 1 else int(max(b, 0) * math.log2(abs(a))) + 1
        return _bounded_int(bits, f"{a} ** {b}" if abs(a) < 2**64 else "the power")
    return broadcast(args, kwargs)


def shift(args: tuple, kwargs: dict) -> int:
    """operator.lshift: `a << b` has a.bit_length() + b bits."""
    a, b = args[:2]
    if _ints(args):
        return _bounded_int(abs(a).bit_length() + max(b, 0) if a else 0, f"a shift by {b}")
    return broadcast(args, kwargs)


def integer(args: tuple, kwargs: dict) -> int:
    """builtins.int: from text, at most MAX_INT_BITS characters (Python parses decimal text in
    quadratic time; the store refuses a result over MAX_INT_BITS bits)."""
    text = args[0] if args else kwargs.get("x")
    if isinstance(text, str | bytes | bytearray) and len(text) > MAX_INT_BITS:
        raise LimitError(
            f"int() of {len(text):,} characters; this node parses at most {MAX_INT_BITS:,}"
        )
    return 1


def rounding(args: tuple, kwargs: dict) -> int:
    """builtins.round: rounding an int to -n digits computes 10 ** n."""
    digits = kwargs.get("ndigits", args[1] if len(args) > 1 else None)
    if args and isinstance(args[0], int) and isinstance(digits, int) and digits < 0:
        return _bounded_int(math.ceil(-digits * math.log2(10)), f"rounding to {digits} digits")
    return 1


def summation(args: tuple, kwargs: dict) -> int:
    """builtins.sum: of numbers or tensors only (summing lists or tuples copies them over and
    over, in quadratic time), ints bounded by the largest and the count."""
    items = args[0] if args else ()
    start = kwargs.get("start", args[1] if len(args) > 1 else 0)
    if not isinstance(start, int | float | torch.Tensor):
        raise TypeError(f"sum() starts from a number or a tensor, not a {type(start).__name__}")
    if isinstance(items, list | tuple):
        ints = [abs(x).bit_length() for x in (*items, start) if isinstance(x, int)]
        _bounded_int(max(ints, default=0) + len(ints).bit_length(), "the sum")
    return python_items(args, kwargs)
