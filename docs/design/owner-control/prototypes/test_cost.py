"""Issue class-7 and class-5 attacks against GuardedTaint (compute only)."""
import torch, torch.nn as nn
from costguard import GuardedTaint, CostExceeded
def attempt(name, fn, expect_refused=True):
    m = GuardedTaint(strict=True, max_elements=2**24, max_flops=2**34)
    try:
        with m: r = fn()
        print(("FAIL " if expect_refused else "PASS ") + name)
    except CostExceeded as e: print(("PASS " if expect_refused else "FAIL ") + name + f"  [{str(e)[:70]}]")
attempt("mm of two ones(16384,16384)", lambda: torch.mm(torch.ones(4096, 4096), torch.ones(4096, 4096)))
attempt("arange with tensor bounds", lambda: torch.arange(torch.tensor(0), torch.tensor(2**30)))
attempt("cartesian_prod", lambda: torch.cartesian_prod(torch.arange(5000), torch.arange(5000)))
attempt("Sequential intermediates", lambda: nn.Sequential(nn.Linear(4, 2**25))(torch.ones(1, 4)))
attempt("ConvTranspose2d stride 700", lambda: nn.ConvTranspose2d(1, 1, 3, stride=700)(torch.ones(1, 1, 40, 40)))
attempt("expand then add (view is free, add is bounded)", lambda: torch.ones(1).expand(2**30) + 1)
attempt("einsum -> bmm bounded by flops", lambda: torch.einsum("ij,jk->ik", torch.ones(4096, 4096), torch.ones(4096, 4096)))
attempt("linalg.inv (no formula)", lambda: torch.linalg.inv(torch.eye(3)))
attempt("masked_select with broadcast bound", lambda: torch.masked_select(torch.ones(1, 8192), torch.ones(8192, 1, dtype=torch.bool)))
attempt("small mm ok", lambda: torch.ones(64, 784) @ torch.ones(784, 500), expect_refused=False)
m = GuardedTaint()
with m: e = torch.empty(1000)
print(("PASS " if bool((e == 0).all()) else "FAIL ") + "empty() gives zeros")
