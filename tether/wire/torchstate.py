"""The thread-local torch state a Call was issued in, as the small integer it travels as.

A command runs later than it is issued (commands are queued and sent in frames), so it carries
the state its result depends on, and the node runs it under that (`tether.node.state`).
`Call.state` (wire format 4) holds it as bits:

- bit 0: grad mode is off (`torch.no_grad()`);
- bit 1: inference mode is on (`torch.inference_mode()`);
- bits 2-3: the default dtype, by its position in `DEFAULT_DTYPES`.

0 is torch's own default: grad on, no inference mode, float32. Autocast is not carried: tether
computes on the CPU.
"""

from __future__ import annotations

import torch

# The dtypes torch takes as its default (torch.set_default_dtype refuses every other).
DEFAULT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NO_GRAD = 1
INFERENCE = 2
_DTYPE_SHIFT = 2
DTYPE_BITS = 3 << _DTYPE_SHIFT
STATES = len(DEFAULT_DTYPES) << _DTYPE_SHIFT  # the codes are 0 to STATES - 1
_CODES = {dtype: i << _DTYPE_SHIFT for i, dtype in enumerate(DEFAULT_DTYPES)}


def current() -> int:
    """The code of this thread's torch state now."""
    return (
        (not torch.is_grad_enabled())
        | torch.is_inference_mode_enabled() << 1
        | _CODES[torch.get_default_dtype()]
    )


def default_dtype(state: int) -> torch.dtype:
    """The default dtype a state code names."""
    return DEFAULT_DTYPES[(state & DTYPE_BITS) >> _DTYPE_SHIFT]
