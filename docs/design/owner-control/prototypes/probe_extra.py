"""Probe ops that the static scan flagged but SchemaInfo does not call mutable (CPU, torch 2.13)."""
import torch
rm, rv = torch.zeros(3), torch.ones(3)
try:
    torch.batch_norm_update_stats(torch.randn(4, 3), rm, rv, 0.5)
    print("batch_norm_update_stats: running_mean changed:", not torch.equal(rm, torch.zeros(3)), "version", rm._version)
except Exception as e: print("batch_norm_update_stats:", type(e).__name__, str(e)[:100])
rm, rv = torch.zeros(3), torch.ones(3)
try:
    torch.ops.aten._batch_norm_no_update(torch.randn(4, 3), None, None, rm, rv, 0.5, 1e-5)
    print("_batch_norm_no_update changed:", not torch.equal(rm, torch.zeros(3)))
except Exception as e: print("_batch_norm_no_update:", type(e).__name__, str(e)[:100])
noise = torch.zeros(5)
torch.ops.aten.rrelu_with_noise(torch.randn(5), noise, 0.1, 0.3, True)
print("rrelu_with_noise noise changed:", not torch.equal(noise, torch.zeros(5)), torch.ops.aten.rrelu_with_noise.default._schema)
