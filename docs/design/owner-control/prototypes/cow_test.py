"""Does Tensor._lazy_clone() (copy-on-write) keep the owner's data intact under every write route?
And what does it cost (first write materializes a full copy)? torch 2.13 CPU."""
import torch, torch.nn.functional as F, time, statistics
def owner(): return torch.arange(12.0)
routes = {
    "add_ in place": lambda c: c.add_(1),
    "view then add_": lambda c: c.view(3, 4)[1].add_(1),
    "copy_ into view": lambda c: c[2:5].copy_(torch.full((3,), 9.0)),
    "out=": lambda c: torch.add(torch.ones(12), 1, out=c),
    "setitem": lambda c: c.__setitem__(slice(0, 3), 7.0),
    "native_batch_norm running_mean": lambda c: F.batch_norm(torch.randn(4, 12), c, torch.ones(12), training=True),
    "instance_norm running_mean": lambda c: F.instance_norm(torch.randn(2, 12, 3), c, torch.ones(12), use_input_stats=True),
    "batch_norm_update_stats": lambda c: torch.batch_norm_update_stats(torch.randn(4, 12), c, torch.ones(12), 0.5),
    "zero_": lambda c: c.zero_(),
    "resize_ (grow)": lambda c: c.resize_(24),
    "index_put_": lambda c: c.index_put_((torch.tensor([1]),), torch.tensor(5.0)),
    "Adam step on Parameter(c)": lambda c: (lambda p: (setattr(p, "grad", torch.ones(12)), torch.optim.Adam([p]).step()))(torch.nn.Parameter(c)),
    "numpy view write": lambda c: c.numpy().__setitem__(0, 42.0),
    "set_ then write": lambda c: torch.empty(0).set_(c).add_(1),
    "data_ptr via storage.copy_": lambda c: c.untyped_storage().copy_(torch.zeros(12).untyped_storage()),
}
for name, fn in routes.items():
    o = owner(); c = o._lazy_clone()
    try:
        fn(c); err = ""
    except Exception as e: err = f" (raised {type(e).__name__}: {str(e)[:60]})"
    intact = torch.equal(o, owner())
    print(f"{'INTACT ' if intact else 'CHANGED'}  {name}{err}")
# cost
big = torch.randn(2000, 784)
def t(f, n=2000):
    t0 = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t0) / n * 1e6
r = []
for _ in range(5):
    r.append((t(lambda: big._lazy_clone()), t(lambda: big.view(-1)), t(lambda: big[0:64]._lazy_clone())))
print("lazy_clone of 2000x784: %.2f us; view(): %.2f us; slice+lazy_clone: %.2f us (median of 5, under load)" % tuple(statistics.median(x[i] for x in r) for i in range(3)))
c = big._lazy_clone(); t0 = time.perf_counter(); c.add_(1); print("first write materializes: %.0f us (full copy of 6.3 MB)" % ((time.perf_counter() - t0) * 1e6))
# reading through a COW clone: compute cost the same?
x = big._lazy_clone(); w = torch.randn(784, 500)
a = statistics.median(t(lambda: big[:64] @ w, 300) for _ in range(3)); b = statistics.median(t(lambda: x[:64] @ w, 300) for _ in range(3))
print("matmul from stored vs from COW clone: %.1f us vs %.1f us" % (a, b))
