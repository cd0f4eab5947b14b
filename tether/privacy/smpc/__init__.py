"""Secure multi-party computation with PySyft's API: `x.fix_precision().share(bob, alice,
crypto_provider=secure_worker)`, arithmetic, matmul, comparisons and ReLU on the shares, and
`.get().float_precision()`. Shares are ordinary int64 tensors stored on the workers; the
parties' steps and the provider's dealing are ops in the op table (`ops.py`, registered on
import). docs/smpc.md describes the protocols and what they protect.
"""

from tether.privacy.smpc.module import FixedPrecisionSGD, install
from tether.privacy.smpc.ring import RingError
from tether.privacy.smpc.tensor import AdditiveSharingTensor, FixedPrecisionTensor, RemoteSharing

__all__ = [
    "AdditiveSharingTensor",
    "FixedPrecisionSGD",
    "FixedPrecisionTensor",
    "RemoteSharing",
    "RingError",
    "install",
]
