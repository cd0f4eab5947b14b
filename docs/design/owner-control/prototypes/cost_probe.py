"""Cost bounds before execution (torch 2.13 CPU, 1 thread, loaded machine):
per-op overhead of (1) arithmetic bound from shapes, (2) running the aten op on the meta device
to learn output sizes, (3) FakeTensorMode, and (4) torch.utils.flop_counter's registry formulas;
plus which ops have no meta kernel / are data-dependent (Tag.dynamic_output_shape,
data_dependent_output) among the allowlist's hot ops."""
import time, statistics, torch, torch.nn.functional as F
from torch.utils.flop_counter import flop_registry
from torch.utils._python_dispatch import TorchDispatchMode
from torch._subclasses.fake_tensor import FakeTensorMode

def us(f, n=2000, reps=7):
    r = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n): f()
        r.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(r)

torch.set_num_threads(1)
aten = torch.ops.aten
x, w = torch.randn(64, 784), torch.randn(784, 500)
img, k = torch.randn(64, 1, 28, 28), torch.randn(32, 1, 3, 3)
cases = {
    "mm 64x784 @ 784x500": (aten.mm.default, (x, w)),
    "conv2d 64x1x28x28 * 32x1x3x3": (aten.convolution.default, (img, k, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)),
    "add 64x784": (aten.add.Tensor, (x, x)),
}
def to_meta(a):
    if isinstance(a, torch.Tensor): return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
    if isinstance(a, (list, tuple)): return type(a)(to_meta(v) for v in a)
    return a
print(f"{'op':34s} {'run':>8s} {'meta':>8s} {'meta+conv args':>15s} {'fake':>8s} {'flop formula':>13s}")
for name, (op, args) in cases.items():
    margs = to_meta(args)
    run = us(lambda: op(*args), n=50)
    meta = us(lambda: op(*margs))
    conv_meta = us(lambda: op(*to_meta(args)))
    fm = FakeTensorMode(); fargs = tuple(fm.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
    with fm: fake = us(lambda: op(*fargs))
    out = op(*margs); outs = out.shape
    reg = flop_registry.get(op.overloadpacket)
    fl = us(lambda: reg(*args, out_val=out)) if reg else float("nan")
    flops = reg(*args, out_val=out) if reg else None
    print(f"{name:34s} {run:8.1f} {meta:8.1f} {conv_meta:15.1f} {fake:8.1f} {fl:13.2f}   flops={flops}")
print("\nflop_registry covers:", sorted(str(k) for k in flop_registry)[:40], "...", len(flop_registry))
# meta kernels / data-dependent output shapes among ops seen in tether's allowlist workloads
dd = [str(o) for o in (aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default, aten._unique2.default, aten.bincount.default, aten.repeat_interleave.Tensor, aten.histc.default, aten.arange.start_step, aten.item.default, aten._local_scalar_dense.default)]
for o in (aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.bincount.default, aten.repeat_interleave.Tensor, aten._local_scalar_dense.default):
    tags = [t.name for t in o.tags if t.name in ("dynamic_output_shape", "data_dependent_output", "pointwise")]
    try:
        o(*to_meta((torch.ones(4, dtype=torch.long),) if o is not aten.masked_select.default else (torch.ones(4), torch.ones(4, dtype=torch.bool))))
        ok = "meta ok"
    except Exception as e: ok = f"meta fails: {type(e).__name__}"
    print(f"  {str(o):32s} tags={tags} {ok}")
# fraction of aten overloads with a pointwise tag (cheap: output = broadcast of inputs)
n = pw = 0
for name in dir(aten):
    pk = getattr(aten, name, None)
    if not isinstance(pk, torch._ops.OpOverloadPacket): continue
    for ov in pk.overloads():
        n += 1; pw += torch.Tag.pointwise in getattr(pk, ov).tags
print(f"\naten overloads: {n}, tagged pointwise: {pw}")
