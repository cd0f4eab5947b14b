"""Which read-only ops materialize a COW clone (a full copy) — cost, not correctness."""
import torch, torch.nn as nn, torch.nn.functional as F
print([n for n in dir(torch._C) if "cow" in n.lower() or "lazy_clone" in n.lower()])
is_cow = torch._C._is_cow_tensor
base = torch.randn(64, 1, 28, 28)
net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 26 * 26, 10))
checks = {
    "matmul": lambda c: c.view(64, -1) @ torch.randn(784, 5),
    "conv forward+backward": lambda c: net(c).sum().backward(),
    "sum": lambda c: c.sum(),
    "index rows": lambda c: c[torch.tensor([1, 2])],
    "clone": lambda c: c.clone(),
    "DataLoader batch": lambda c: next(iter(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(c), batch_size=8))),
    "numpy()": lambda c: c.numpy(),
    "data_ptr()": lambda c: c.data_ptr(),
    "tolist first row": lambda c: c[0, 0, 0].tolist(),
    "F.batch_norm eval": lambda c: F.batch_norm(c, torch.zeros(1), torch.ones(1), training=False),
}
for k, f in checks.items():
    c = base._lazy_clone(); f(c)
    print(f"{k:25s} still COW: {is_cow(c)}")
