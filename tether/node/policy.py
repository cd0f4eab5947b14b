"""The owner's release and taint rules: what may leave a node, and what counts as the owner's
data. The owner-control issue rewrites this module; keep its surface small.
"""

# Calls that read facts about the owner's machine: their results count as the owner's data.
OWNER_FACTS = frozenset(
    {
        "torch.cuda.is_available",
        "torch.cuda.device_count",
        "torch.get_default_dtype",
        "torch.is_grad_enabled",
    }
)
