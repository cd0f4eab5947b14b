"""The randomness of the masks: keys agreed by X25519, derived by HKDF-SHA256, expanded into
ring elements by ChaCha20 (all from `cryptography`; nothing here is a hand-written primitive).

A pairwise mask seed is `HKDF(X25519(a, B))`, the same for both ends of a pair; a self-mask seed
is 32 random bytes. A seed's stream is ChaCha20's keystream under it (a fresh key each round,
so the zero nonce never repeats under one key), read as little-endian uint32s.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_STREAM = np.dtype("<u4")  # the keystream's bytes read the same way on every machine
_NONCE = bytes(16)  # ChaCha20's 16 bytes: counter and nonce, zero (each key is used once)
_ZEROS = bytes(1 << 20)


def derive(shared: bytes, purpose: bytes, context: bytes) -> bytes:
    """A 32-byte key for one `purpose` ("mask", "share") from an X25519 shared secret, bound
    to the round and the pair (`context`)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=b"tether secagg " + purpose + context,
    ).derive(shared)


def agree(private: X25519PrivateKey, public: bytes, purpose: bytes, context: bytes) -> bytes:
    """The key this end and the owner of `public` both derive."""
    return derive(private.exchange(X25519PublicKey.from_public_bytes(public)), purpose, context)


def keystream(key: bytes, nonce: bytes, out: memoryview) -> None:
    """ChaCha20's keystream under a 32-byte key and 16-byte nonce, written into `out`'s bytes
    (the zeros it encrypts are read from one buffer for streams up to 1 MB)."""
    n = out.nbytes
    zeros = _ZEROS if n <= len(_ZEROS) else bytes(n)
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    encryptor.update_into(memoryview(zeros)[:n], out)


def stream(seed: bytes, length: int, out: np.ndarray | None = None) -> np.ndarray:
    """`length` pseudo-random ring elements from a 32-byte seed (into `out` if given)."""
    if out is None:
        out = np.empty(length, dtype=_STREAM)
    if length:
        keystream(seed, _NONCE, out.data.cast("B"))
    return out


class Expander:
    """Adds or subtracts streams into a ring vector, reusing one buffer (a round expands
    hundreds of them)."""

    def __init__(self, length: int) -> None:
        self.buffer = np.empty(length, dtype=_STREAM)

    def add(self, target: np.ndarray, seed: bytes) -> None:
        np.add(target, stream(seed, len(self.buffer), self.buffer), out=target)

    def subtract(self, target: np.ndarray, seed: bytes) -> None:
        np.subtract(target, stream(seed, len(self.buffer), self.buffer), out=target)
