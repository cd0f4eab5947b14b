"""Dynamic probe (torch 2.13 CPU): run real workloads under a dispatch mode that snapshots every
tensor argument's bytes before each aten op and compares after. Reports each op that changed an
argument (a) without a schema write annotation, and (b) whether torch._C._SchemaInfo (which
knows the 'training ops') calls it mutable given the actual argument values; and whether
_version was bumped."""
import torch, torch.nn as nn, torch.nn.functional as F, collections
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

def flat_args(op, args, kwargs):
    out = []
    for i, a in enumerate(op._schema.arguments):
        if a.kwarg_only: v = kwargs.get(a.name, None) if a.name in kwargs else None
        else: v = args[i] if i < len(args) else kwargs.get(a.name)
        out.append((i, a, v))
    return out

found = collections.OrderedDict()
class Probe(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        snaps = []
        for i, a, v in flat_args(func, args, kwargs):
            ts = v if isinstance(v, (list, tuple)) else [v]
            for t in ts:
                if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_sparse and t.numel() < 10**7:
                    snaps.append((i, a, t, t.detach().clone(), t._version))
        r = func(*args, **kwargs)
        si = torch._C._SchemaInfo(func._schema)
        for i, a, v in flat_args(func, args, kwargs):
            if not isinstance(v, torch.Tensor) and v is not None and not isinstance(v, (list, tuple)):
                try: si.add_argument_value(a.name, v)
                except Exception: pass
        for i, a, t, before, ver in snaps:
            same = torch.equal(t.detach().reshape(-1).view(torch.uint8) if t.dtype!=torch.bool else t, before.reshape(-1).view(torch.uint8) if before.dtype!=torch.bool else before) if t.is_contiguous() and before.is_contiguous() else torch.equal(t, before)
            if not same:
                annotated = a.alias_info is not None and a.alias_info.is_write
                if not annotated:
                    si_m = si.is_mutable(torch._C._SchemaArgument(torch._C._SchemaArgType.input, i))
                    key = (str(func), a.name)
                    found.setdefault(key, (si_m, t._version != ver))
        return r

def bn(train=True):
    m = nn.BatchNorm2d(3); m.train(train); m(torch.randn(4, 3, 5, 5))
def workloads():
    yield "BatchNorm2d train", lambda: bn(True)
    yield "F.batch_norm train", lambda: F.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True)
    yield "InstanceNorm1d track", lambda: nn.InstanceNorm1d(3, track_running_stats=True)(torch.randn(4, 3, 6))
    yield "F.instance_norm", lambda: F.instance_norm(torch.randn(4, 3, 6), torch.zeros(3), torch.ones(3), use_input_stats=True)
    yield "rrelu train", lambda: F.rrelu(torch.randn(10), training=True)
    yield "embedding max_norm", lambda: F.embedding(torch.tensor([0, 1]), torch.randn(4, 3) * 10, max_norm=1.0)
    yield "LSTM+GRU", lambda: (nn.LSTM(3, 4)(torch.randn(5, 2, 3)), nn.GRU(3, 4)(torch.randn(5, 2, 3)))
    yield "dropout", lambda: F.dropout(torch.randn(10), 0.5, True)
    for opt in ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD"]:
        for kw in ({"foreach": False}, {"foreach": True}, {"fused": True}):
            def step(opt=opt, kw=kw):
                p = nn.Parameter(torch.randn(5)); p.grad = torch.randn(5)
                extra = {"momentum": 0.9} if opt in ("SGD", "RMSprop") else {}
                try: o = getattr(torch.optim, opt)([p], lr=0.1, **extra, **kw)
                except Exception: return
                o.step(); p.grad = torch.randn(5); o.step()
            yield f"{opt} {kw}", step
    yield "GradScaler cpu", lambda: None
for name, fn in workloads():
    with Probe():
        try: fn()
        except Exception as e: print("  (", name, "failed:", type(e).__name__, str(e)[:80], ")")
print("ops that changed an argument with NO write annotation in their schema:")
for (op, arg), (si_m, bumped) in found.items():
    print(f"  {op}  arg={arg}  SchemaInfo.is_mutable={si_m}  _version bumped={bumped}")
