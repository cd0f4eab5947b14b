"""Verify: which norm ops write running stats, with/without schema write annotations, with/without _version bumps.
Prints the schema of each, and what happened to running_mean under each call (torch 2.13 CPU)."""
import torch, torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

class Log(TorchDispatchMode):
    def __init__(self): super().__init__(); self.ops=[]
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func); return func(*args, **(kwargs or {}))

def writes(op):
    return [a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]

def run(name, fn):
    x = torch.randn(8, 4, 5)
    rm, rv = torch.zeros(4), torch.ones(4)
    v0 = (rm._version, rv._version)
    with Log() as L:
        fn(x, rm, rv)
    changed = not torch.equal(rm, torch.zeros(4))
    print(f"{name}: running_mean changed={changed} version {v0}->{(rm._version, rv._version)}")
    for op in dict.fromkeys(L.ops):
        print("   ", op, "write-annotated:", writes(op))

run("F.batch_norm training", lambda x, rm, rv: F.batch_norm(x, rm, rv, training=True))
run("F.instance_norm use_input_stats", lambda x, rm, rv: F.instance_norm(x, rm, rv, use_input_stats=True))
run("nn.BatchNorm1d train", lambda x, rm, rv: torch.nn.functional.batch_norm(x.reshape(8,4,5), rm, rv, None, None, True, 0.5))
for n in ["native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional", "_batch_norm_with_update", "batch_norm", "instance_norm", "cudnn_batch_norm", "miopen_batch_norm", "_batch_norm_impl_index", "batch_norm_update_stats", "native_batch_norm_backward"]:
    p = getattr(torch.ops.aten, n, None)
    if p is None: print(n, "absent"); continue
    for ov in p.overloads():
        op = getattr(p, ov)
        print(f"{n}.{ov}: {op._schema}")
