"""The issue's class-2 attacks (taint follows objects, not memory) and class-6 (owner data
changed in place) against the MemoryTaint prototype; plus autograd backward under the mode."""
import torch, torch.nn as nn, torch.nn.functional as F
from taint import MemoryTaint, WriteRefused

def fresh(strict=False):
    m = MemoryTaint(strict=strict)
    secret = torch.arange(6.0)
    m.publish(secret)
    return m, secret

ok = lambda name, cond: print(("PASS " if cond else "FAIL ") + name)
# 2a. P mine, V = P.view(-1), P.copy_(secret), get V
m, secret = fresh()
with m:
    P = torch.zeros(6); V = P.view(2, 3); P.copy_(secret)
ok("view then copy_: V tainted", m.level_of(V) > 0)
# 2b. torch.add(secret, 0, out=P)
m, secret = fresh()
with m:
    P = torch.zeros(6); torch.add(secret, 0, out=P)
ok("out=P tainted", m.level_of(P) > 0)
# 2c. module parameter after assign, then state_dict
m, secret = fresh()
with m:
    lin = nn.Linear(6, 1, bias=False)
    with torch.no_grad(): lin.weight.view(-1).copy_(secret)
    sd = lin.state_dict()
ok("module param via assign -> state_dict tainted", m.level_of(sd["weight"]) > 0)
# 2d. list holding P: container walk at egress checks P's storage
ok("list holding P: egress walk sees P", any(m.level_of(t) for t in [P]))
# 6a. batch_norm running_mean = view of owner data
m, secret = fresh()
try:
    with m: F.batch_norm(torch.randn(4, 6), secret.view(6), torch.ones(6), training=True)
    ok("batch_norm into owner data refused", False)
except WriteRefused: ok("batch_norm into owner data refused", torch.equal(secret, torch.arange(6.0)))
m, secret = fresh()
try:
    with m: F.instance_norm(torch.randn(2, 6, 3), secret, torch.ones(6), use_input_stats=True)
    ok("instance_norm into owner data refused", False)
except WriteRefused: ok("instance_norm into owner data refused", torch.equal(secret, torch.arange(6.0)))
m, secret = fresh()
try:
    with m: secret[1:].add_(1)
    ok("add_ on a view of owner data refused", False)
except WriteRefused: ok("add_ on a view of owner data refused", torch.equal(secret, torch.arange(6.0)))
# the hole SchemaInfo misses: batch_norm_update_stats (not annotated, not in SchemaInfo)
m, secret = fresh()
try:
    with m: torch.batch_norm_update_stats(torch.randn(4, 6), secret, torch.ones(6), 0.5)
    ok("batch_norm_update_stats into owner data refused (precise rule)", False)
except WriteRefused: ok("batch_norm_update_stats refused", True)
print("   owner data intact after batch_norm_update_stats:", torch.equal(secret, torch.arange(6.0)))
# strict: running stats of a scientist BatchNorm tainted after forward on private data
m, secret = fresh(strict=True)
with m:
    rm = torch.zeros(6); torch.batch_norm_update_stats(secret.view(1, 6).expand(4, 6), rm, torch.ones(6), 0.5)
ok("strict: unannotated writer's target tainted", m.level_of(rm) > 0)
m, secret = fresh(strict=False)
with m:
    rm = torch.zeros(6); torch.batch_norm_update_stats(secret.view(1, 6).expand(4, 6), rm, torch.ones(6), 0.5)
ok("precise mode misses batch_norm_update_stats (expected FAIL here -> why strict is conservative)", m.level_of(rm) > 0)
# backward: grads of a public model trained on private data are tainted
m, secret = fresh()
with m:
    lin = nn.Linear(6, 3)
    lin(secret.view(1, 6)).sum().backward()
ok("backward under the mode taints .grad", m.level_of(lin.weight.grad) > 0)
# fresh outputs of clean inputs clear stale marks
m, secret = fresh()
with m:
    a = secret * 2; sid = torch._C._storage_id(a); del a
    b = torch.ones(6) * 3
ok("clean output not tainted (even if address reused)", m.level_of(b) == 0)
# optimizer step on tainted grads taints params
m, secret = fresh()
with m:
    lin = nn.Linear(6, 3); opt = torch.optim.Adam(lin.parameters())
    F.mse_loss(lin(secret.view(1, 6)), torch.zeros(1, 3)).backward(); opt.step()
ok("Adam step taints weights + exp_avg", m.level_of(lin.weight) > 0 and m.level_of(opt.state[lin.weight]["exp_avg"]) > 0)
