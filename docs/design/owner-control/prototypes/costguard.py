"""Prototype: pre-execution cost bound inside the same dispatch mode (subclass of MemoryTaint).
For every aten op BEFORE it runs: output elements and FLOPs from
  - torch.utils.flop_counter.flop_registry (mm, addmm, bmm, baddbmm, convolution(+backward), sdpa)
    with output shapes from a meta-device run,
  - Tag.pointwise ops: output = broadcast of the inputs, cost = its elements,
  - Tag.dynamic_output_shape ops (nonzero, masked_select, unique, bincount, repeat_interleave):
    no meta kernel; refused unless in a small table of upper bounds,
  - everything else: a meta-device run for the output sizes; cost = elements in + out.
Estimates are memoized by (op, shapes, dtypes, non-tensor args): a training loop repeats them.
Ops whose work grows faster than their output and have no formula are refused (table below)."""
import math, torch
from torch.utils.flop_counter import flop_registry
from taint import MemoryTaint, Tensor

_PW = torch.Tag.pointwise
_DYN = torch.Tag.dynamic_output_shape
aten = torch.ops.aten
# work super-linear in the output and no formula in flop_registry: refuse until one is written
_NEEDS_FORMULA = {"linalg_", "_linalg_", "cholesky", "lu", "svd", "eig", "qr", "matrix_exp", "cdist", "_cdist", "triangular_solve", "_fft", "fft_", "einsum"}
_DYN_BOUNDS = {  # upper bound on output elements from input sizes (not values)
    aten.nonzero.default: lambda a: a[0].numel() * max(a[0].dim(), 1),
    aten.masked_select.default: lambda a: math.prod(torch.broadcast_shapes(a[0].shape, a[1].shape)),
    aten._unique2.default: lambda a: 3 * a[0].numel(),
    aten.unique_dim.default: lambda a: 3 * a[0].numel(),
}

class CostExceeded(RuntimeError):
    pass

def _meta(a):
    if isinstance(a, Tensor):
        return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
    if isinstance(a, (list, tuple)):
        return type(a)(_meta(x) for x in a)
    return a

def _key(a):
    if isinstance(a, Tensor):
        return (tuple(a.shape), a.dtype, a.stride())
    if isinstance(a, (list, tuple)):
        return tuple(_key(x) for x in a)
    if isinstance(a, (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return a
    return id(a)  # generators etc.

def _numel_out(o):
    if isinstance(o, Tensor):
        return o.numel()
    if isinstance(o, (list, tuple)):
        return sum(_numel_out(x) for x in o)
    return 0

class GuardedTaint(MemoryTaint):
    def __init__(self, strict=False, max_elements=2**26, max_flops=2**36):
        super().__init__(strict)
        self.max_elements, self.max_flops = max_elements, max_flops
        self.budget = max_flops  # per command; the node resets it
        self._cost_cache = {}
        self._pw = {}
        self.hits = self.misses = 0

    def estimate(self, func, args, kwargs):
        pw = self._pw.get(func)
        if pw is None:
            pw = self._pw[func] = _PW in func.tags
        if pw:  # output = broadcast of the inputs: same shapes (the common case) cost nothing
            first, same = None, True
            for a in args:
                if isinstance(a, Tensor):
                    if first is None: first = a
                    elif a.shape != first.shape: same = False
            if same and not kwargs:
                n = first.numel() if first is not None else 1
                return n, n
        key = (func, _key(args), _key(tuple(sorted(kwargs.items()))) if kwargs else None)
        hit = self._cost_cache.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        name = func.overloadpacket.__name__
        if any(name.startswith(p) or p in name for p in _NEEDS_FORMULA) and func.overloadpacket not in flop_registry:
            raise CostExceeded(f"{func}: no cost formula; refused")
        if pw:
            shapes = [a.shape for a in args if isinstance(a, Tensor)] + [a.shape for a in kwargs.values() if isinstance(a, Tensor)]
            n = math.prod(torch.broadcast_shapes(*shapes)) if shapes else 1
            est = (n, n)
        elif _DYN in func.tags:
            b = _DYN_BOUNDS.get(func)
            if b is None:
                raise CostExceeded(f"{func}: data-dependent output size and no bound; refused")
            n = b(args)
            est = (n, n + sum(a.numel() for a in args if isinstance(a, Tensor)))
        elif func is aten._local_scalar_dense.default:
            est = (1, 1)
        else:
            try:
                out = func(*_meta(args), **_meta(kwargs or {}))
            except Exception as exc:  # no meta kernel: refuse rather than run blind
                raise CostExceeded(f"{func}: cannot bound its output ({type(exc).__name__})") from None
            n = _numel_out(out)
            reg = flop_registry.get(func.overloadpacket)
            if reg is not None:
                flops = reg(*args, **(kwargs or {}), out_val=out)
            else:
                flops = n + sum(a.numel() for a in args if isinstance(a, Tensor))
            est = (n, flops)
        if est is None: pass
        self._cost_cache[key] = est
        return est

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        n, flops = self.estimate(func, args, kwargs)
        if n > self.max_elements or flops > self.budget:
            raise CostExceeded(f"{func}: {n} elements / {flops} flops over the bound")
        self.budget -= flops
        # fresh memory zeroed: the empty family gives zeros (cheap: only these ops)
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if func in _EMPTY:
            out.zero_()
        return out

_EMPTY = {aten.empty.memory_format, aten.empty_strided.default, aten.new_empty.default, aten.new_empty_strided.default, aten.empty_like.default}
