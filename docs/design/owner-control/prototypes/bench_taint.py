"""Cost of storage-taint tracking, compute only (no wire): plain PyTorch vs a no-op
TorchDispatchMode vs MemoryTaint (precise: schema writes + SchemaInfo) vs MemoryTaint(strict:
every tensor arg of a tainted op counts as written), with the training data published (tainted).
(a) tutorial MLP 784-500-10, batch 64, 5,000 MNIST-shaped samples, SGD, one epoch;
(b) Duet SyNet (examples/duet_mnist), batch 64, --synet-batches batches, Adadelta.
Rounds interleave the four variants (rotating order); ratio = median over rounds of
(variant epoch / plain epoch in the same round). torch threads = 1 (shared, loaded machine).
Run: python bench_taint.py [--rounds 7] [--synet-batches 8]"""
import argparse, statistics, time, torch, torch.nn as nn, torch.nn.functional as F
from taint import MemoryTaint, NoOp

class SyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1); self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout = nn.Dropout2d(0.25); self.fc1 = nn.Linear(9216, 128); self.fc2 = nn.Linear(128, 10)
    def forward(self, x):
        x = F.relu(self.conv1(x)); x = F.relu(self.conv2(x)); x = F.max_pool2d(x, 2)
        x = self.dropout(x); x = torch.flatten(x, 1); x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(F.dropout(x, 0.25, self.training)), dim=1)

def mlp(): return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))

def epoch(make_model, make_opt, data, targets, bs, n_batches, mode):
    torch.manual_seed(0)
    model = make_model(); opt = make_opt(model.parameters())
    if isinstance(mode, MemoryTaint):
        mode.levels.clear(); mode.protected.clear(); mode.publish(data); mode.publish(targets)
    t0 = time.perf_counter()
    for i in range(n_batches):
        x, y = data[i * bs:(i + 1) * bs], targets[i * bs:(i + 1) * bs]
        if mode is None:
            opt.zero_grad(); loss = F.nll_loss(F.log_softmax(model(x), 1) if make_model is mlp else model(x), y); loss.backward(); opt.step()
        else:
            # the node enters the mode once per command: forward, loss, backward, step, zero_grad
            with mode: opt.zero_grad()
            with mode: out = model(x)
            with mode: loss = F.nll_loss(F.log_softmax(out, 1) if make_model is mlp else out, y)
            with mode: loss.backward()
            with mode: opt.step()
    dt = time.perf_counter() - t0
    if isinstance(mode, MemoryTaint):
        assert mode.level_of(next(model.parameters())) == 2, "weights must be tainted"
    return dt

def run(name, make_model, make_opt, data, targets, n_batches, rounds):
    variants = {"plain": None, "noop mode": NoOp(), "taint precise": MemoryTaint(False), "taint strict": MemoryTaint(True)}
    names = list(variants)
    times = {k: [] for k in names}
    epoch(make_model, make_opt, data, targets, 64, 2, None)  # warm up
    for r in range(rounds):
        order = names[r % 4:] + names[:r % 4]
        for k in order:
            times[k].append(epoch(make_model, make_opt, data, targets, 64, n_batches, variants[k]))
    print(f"\n{name}: {rounds} rounds, {n_batches} batches of 64")
    for k in names:
        ratios = [t / p for t, p in zip(times[k], times["plain"])]
        print(f"  {k:14s} median epoch {statistics.median(times[k])*1e3:8.1f} ms   ratio vs plain (median of rounds) {statistics.median(ratios):.3f}  [min {min(ratios):.3f} max {max(ratios):.3f}]")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(); ap.add_argument("--rounds", type=int, default=7); ap.add_argument("--synet-batches", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(5000, 1, 28, 28, generator=g); targets = torch.randint(0, 10, (5000,), generator=g)
    run("(a) tutorial MLP epoch (SGD lr 0.01)", mlp, lambda p: torch.optim.SGD(p, lr=0.01), data, targets, 5000 // 64 + 1, a.rounds)
    run("(b) Duet SyNet (Adadelta lr 1.0)", SyNet, lambda p: torch.optim.Adadelta(p, lr=1.0), data, targets, a.synet_batches, a.rounds)
    # op count per SyNet step, for per-op overhead
    from torch.utils._python_dispatch import TorchDispatchMode
    class Count(TorchDispatchMode):
        n = 0
        def __torch_dispatch__(self, f, t, args=(), kw=None): Count.n += 1; return f(*args, **(kw or {}))
    m = SyNet(); o = torch.optim.Adadelta(m.parameters())
    with Count(): o.zero_grad(); F.nll_loss(m(data[:64]), targets[:64]).backward(); o.step()
    m2 = mlp(); o2 = torch.optim.SGD(m2.parameters(), lr=0.01); c0 = Count.n
    with Count(): o2.zero_grad(); F.nll_loss(F.log_softmax(m2(data[:64]), 1), targets[:64]).backward(); o2.step()
    print(f"\naten ops per step: SyNet {c0}, MLP {Count.n - c0}")
