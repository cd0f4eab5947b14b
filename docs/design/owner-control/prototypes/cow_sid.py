"""COW clone: its own StorageImpl (so taint can be set on it), kept across materialization."""
import torch
o = torch.arange(6.0); c = o._lazy_clone(); sid = torch._C._storage_id
print("clone has own storage id:", sid(c) != sid(o), "| after write same id:", (lambda s: (c.add_(1), sid(c) == s)[1])(sid(c)), "| owner intact:", torch.equal(o, torch.arange(6.0)))
v = o[2:]; cv = v._lazy_clone(); print("clone of a view keeps offset/strides:", cv.storage_offset(), cv.shape, torch.equal(cv, v))
