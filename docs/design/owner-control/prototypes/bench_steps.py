"""Finer interleaving than bench_taint.py for a loaded machine: each round runs ONE training
step (SyNet) or 10 steps (MLP) under each variant in rotating order, on persistent models; the
ratio is the median over rounds of (variant / plain). Also a per-op microbenchmark; variants: plain, no-op mode, MemoryTaint strict, GuardedTaint strict (taint + pre-execution cost bound + empty zeroed)
(torch.add of two 4-element tensors) giving the mode's absolute per-op overhead in us.
torch threads = 1. Run: python bench_steps.py [--rounds 40]"""
import argparse, statistics, time, torch, torch.nn as nn, torch.nn.functional as F
from taint import MemoryTaint, NoOp
from bench_taint import SyNet, mlp
from costguard import GuardedTaint

def make(variant, model_fn, opt_fn, data, targets):
    torch.manual_seed(0); m = model_fn(); o = opt_fn(m.parameters())
    if isinstance(variant, MemoryTaint): variant.publish(data); variant.publish(targets)
    return m, o

def steps(mode, m, o, data, targets, k, i0, wrap_logsm):
    t0 = time.perf_counter()
    for i in range(i0, i0 + k):
        x, y = data[(i % 70) * 64:(i % 70 + 1) * 64], targets[(i % 70) * 64:(i % 70 + 1) * 64]
        if mode is None:
            o.zero_grad(); out = m(x); loss = F.nll_loss(F.log_softmax(out, 1) if wrap_logsm else out, y); loss.backward(); o.step()
        else:
            with mode: o.zero_grad()
            with mode: out = m(x)
            with mode: loss = F.nll_loss(F.log_softmax(out, 1) if wrap_logsm else out, y)
            with mode: loss.backward()
            with mode: o.step()
    return time.perf_counter() - t0

def bench(name, model_fn, opt_fn, k, rounds, data, targets, wrap):
    variants = {"plain": None, "noop mode": NoOp(), "taint strict": MemoryTaint(True), "strict+cost+zero": GuardedTaint(True, max_flops=2**50)}
    state = {n: make(v, model_fn, opt_fn, data, targets) for n, v in variants.items()}
    names = list(variants); t = {n: [] for n in names}
    for n in names: steps(variants[n], *state[n], data, targets, 2, 0, wrap)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t[n].append(steps(variants[n], *state[n], data, targets, k, r * k, wrap))
    print(f"\n{name}: {rounds} rounds x {k} step(s)")
    g = variants["strict+cost+zero"]; print(f"  cost-estimate cache: {g.hits} hits, {g.misses} misses")
    for n in names:
        ratios = [a / b for a, b in zip(t[n], t["plain"])]
        q = statistics.quantiles(ratios, n=4)
        print(f"  {n:14s} median step {statistics.median(t[n]) / k * 1e3:7.2f} ms  ratio {statistics.median(ratios):.3f}  (IQR {q[0]:.3f}-{q[2]:.3f})")
    tm = variants["taint strict"]; p = next(state["taint strict"][0].parameters())
    assert tm.level_of(p) == 2 and tm.level_of(p.grad) == 2

def per_op(rounds=15, n=3000):
    a, b = torch.ones(4), torch.ones(4)
    modes = {"plain": None, "noop mode": NoOp(), "taint precise": MemoryTaint(False), "taint strict": MemoryTaint(True), "strict+cost+zero": GuardedTaint(True, max_flops=2**50)}
    for k in list(modes)[2:]: modes[k].publish(a)
    res = {k: [] for k in modes}
    for r in range(rounds):
        for k, m in modes.items():
            if m is None:
                t0 = time.perf_counter()
                for _ in range(n): torch.add(a, b)
            else:
                with m:
                    t0 = time.perf_counter()
                    for _ in range(n): torch.add(a, b)
            res[k].append((time.perf_counter() - t0) / n * 1e6)
    base = statistics.median(res["plain"])
    print("\nper-op: torch.add(4 el., 4 el.) with a tainted input")
    for k, v in res.items():
        print(f"  {k:14s} {statistics.median(v):6.2f} us/op  (+{statistics.median(v) - base:5.2f} us)")
    x = torch.ones(4); m = modes["taint strict"]
    t0 = time.perf_counter()
    for _ in range(n):
        with m: pass
    print(f"  entering+leaving the mode once (per command): {(time.perf_counter() - t0) / n * 1e6:.2f} us")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(); ap.add_argument("--rounds", type=int, default=40); a = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(4480, 1, 28, 28, generator=g); targets = torch.randint(0, 10, (4480,), generator=g)
    per_op()
    bench("(a) tutorial MLP 784-500-10, SGD", mlp, lambda p: torch.optim.SGD(p, lr=0.01), 10, a.rounds, data, targets, True)
    bench("(b) Duet SyNet, Adadelta", SyNet, lambda p: torch.optim.Adadelta(p, lr=1.0), 1, a.rounds, data, targets, False)
