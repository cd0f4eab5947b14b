"""The secure aggregation protocol (Bonawitz et al., CCS 2017, honest-but-curious version;
Bell et al., CCS 2020 call its complete-graph form SecAgg): a worker's `MaskingClient` and the
coordinator's `Aggregation`, as transport-free state machines. Their messages are plain data
(names, bytes, uint32 vectors); whoever carries them (tether.federated's secure rounds, a test)
calls the steps in order:

1. Advertise: each worker makes two X25519 key pairs, one to encrypt shares to its peers, one
   to agree pairwise masks, and sends the public keys (`MaskingClient.keys`).
2. Share keys: the coordinator sends every worker the roster of keys (`Aggregation.roster`);
   each draws a self-mask seed `b`, splits `b` and its mask private key into Shamir shares
   (threshold t, one per roster member), and encrypts each peer's pair with an AEAD under the
   key their encryption keys agree (`share_keys`). The coordinator routes them (`route`).
3. Masked input: a worker sends `x + PRG(b) + sum_v +-PRG(s_uv) mod 2^32` over the peers v that
   shared (`masked_input`): + where its name sorts before v's, - after, so pairs cancel.
4. Unmask: the coordinator names the workers whose masked inputs arrived (the survivors,
   `collect`); each answering worker gives its shares of `b` of every survivor and of the mask
   key of every peer that dropped after sharing (never both for one peer: it answers once).
   With t answers the coordinator removes the survivors' self masks and the dropped peers'
   pairwise masks (`unmask`); the sum of the survivors' `x` remains.

With fewer than t workers at any step the round aborts (`RoundAborted`) and nothing is
unmasked: a worker refuses to hand out shares for fewer than t survivors. SecAgg+ (Bell et
al.) masks along a sparse k-regular graph instead, cutting the O(n^2) work; at tens to a
hundred workers the complete graph costs well under a second (benchmarks/bench_secagg.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tether.ops import OpState
from tether.privacy.secagg import shamir
from tether.privacy.secagg.masks import KEY_BYTES, Expander, agree
from tether.privacy.secagg.ring import Encoding

ROUND_BYTES = 16
_NONCE_BYTES = 12
# A sealed pair of shares: nonce, the two shares, the AEAD's tag.
SEALED_BYTES = _NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16
MAX_NAME = 256
KEY_NAMES = ("cipher", "mask")


class RoundAborted(Exception):
    """Too few workers took part in a step: the round ends and nothing is unmasked."""


@dataclass(frozen=True)
class Setup:
    """What the coordinator announces for a round: a fresh random id (bound into every key
    and ciphertext), the threshold t and how updates become ring vectors."""

    round: bytes
    threshold: int
    encoding: Encoding

    def __post_init__(self) -> None:
        if not isinstance(self.round, bytes) or len(self.round) != ROUND_BYTES:
            raise ValueError(f"a round id is {ROUND_BYTES} bytes")
        if type(self.threshold) is not int or not 2 <= self.threshold <= self.encoding.clients:
            raise ValueError(
                f"threshold must be an integer in [2, {self.encoding.clients}] (the workers "
                f"asked), got {self.threshold!r}"
            )

    @classmethod
    def parse(cls, value: Any) -> Setup:
        """A setup from plain data (as it travels); ValueError naming what is wrong."""
        fields = {"round", "threshold", "clients", "max_weight", "clip", "count_clip"}
        if not isinstance(value, Mapping) or set(value) != fields:
            raise ValueError(f"a secure aggregation setup is a mapping with keys {sorted(fields)}")
        encoding = Encoding(
            value["clients"], value["max_weight"], value["clip"], value["count_clip"]
        )
        return cls(value["round"], value["threshold"], encoding)

    def to_dict(self) -> dict[str, Any]:
        e = self.encoding
        return {
            "round": self.round,
            "threshold": self.threshold,
            "clients": e.clients,
            "max_weight": e.max_weight,
            "clip": e.clip,
            "count_clip": e.count_clip,
        }

    @classmethod
    def fresh(cls, threshold: int, encoding: Encoding) -> Setup:
        return cls(secrets.token_bytes(ROUND_BYTES), threshold, encoding)


def _names(*names: str) -> bytes:
    return b"".join(len(n.encode()).to_bytes(2, "big") + n.encode() for n in names)


def _pair(setup: Setup, a: str, b: str) -> bytes:
    """The context of a pair's keys: the round and both names, in sorted order."""
    return setup.round + _names(*sorted((a, b)))


def _sign_added(owner: str, peer: str) -> bool:
    """Whether `owner` adds (True) or subtracts the mask it shares with `peer`."""
    return owner < peer


# ---- a worker's side ----------------------------------------------------------------------------


class MaskingClient(OpState):
    """One worker's part in one round: its secrets (key pairs, self-mask seed, the shares its
    peers sent) and its quantised update. An opaque object: it has no way to be read, copied
    or sent (its repr names the worker and the step only); its methods are the protocol's
    steps, each run once and in order, checking everything the coordinator sends."""

    __slots__ = (
        "_cipher",
        "_mask",
        "_own",
        "_roster",
        "_sealed",
        "_seed",
        "_vector",
        "name",
        "setup",
        "step",
    )

    def __init__(self, name: str, setup: Setup, vector: np.ndarray) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ValueError(f"a worker's name is a string of 1 to {MAX_NAME} characters")
        self.name, self.setup = name, setup
        self._vector: np.ndarray | None = vector
        self._cipher = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._roster: dict[str, dict[str, bytes]] = {}
        self._seed = b""
        self._own: tuple[bytes, bytes] = (b"", b"")
        self._sealed: dict[str, bytes] = {}
        self.step = "advertised"

    def __repr__(self) -> str:
        return f"<MaskingClient {self.name!r}, {self.step}>"

    def keys(self) -> dict[str, bytes]:
        """The public keys this worker advertises: to encrypt shares to it, to agree masks."""
        return {
            "cipher": self._cipher.public_key().public_bytes_raw(),
            "mask": self._mask.public_key().public_bytes_raw(),
        }

    def _begin(self, expected: str, step: str) -> None:
        """Start `step`: refused unless the last one done is `expected`. Until the step
        returns the client counts as failed (a step that raised ends its part in the round)."""
        if self.step != expected:
            raise ValueError(f"secure aggregation step {step!r} cannot follow {self.step!r}")
        self.step = "failed"

    def share_keys(self, roster: Any) -> dict[str, bytes]:
        """Split the self-mask seed and the mask key among the roster; each peer's two shares
        sealed to it (ChaCha20-Poly1305 under the key the encryption keys agree)."""
        self._begin("advertised", "shared")
        self._roster = check_roster(roster, self.setup)
        if self._roster.get(self.name) != self.keys():
            raise ValueError(f"the roster does not hold {self.name!r}'s own keys")
        order = sorted(self._roster)
        self._seed = secrets.token_bytes(KEY_BYTES)
        t, n = self.setup.threshold, len(order)
        seeds = shamir.split(self._seed, t, n)
        keys = shamir.split(self._mask.private_bytes_raw(), t, n)
        sealed = {}
        for i, peer in enumerate(order):
            if peer == self.name:
                self._own = (seeds[i], keys[i])
                continue
            aead = ChaCha20Poly1305(self._share_key(peer))
            nonce = secrets.token_bytes(_NONCE_BYTES)
            aad = self.setup.round + _names(self.name, peer)
            sealed[peer] = nonce + aead.encrypt(nonce, seeds[i] + keys[i], aad)
        self.step = "shared"
        return sealed

    def _share_key(self, peer: str) -> bytes:
        return agree(
            self._cipher, self._roster[peer]["cipher"], b"share", _pair(self.setup, self.name, peer)
        )

    def masked_input(self, sealed: Any) -> np.ndarray:
        """The update under its masks: its own and one per peer that shared (`sealed` holds
        their shares for this worker, which it keeps for the unmasking)."""
        self._begin("shared", "masked")
        if not isinstance(sealed, Mapping) or not all(
            isinstance(v, str) and v in self._roster and v != self.name for v in sealed
        ):
            raise ValueError("the shares sent must be keyed by the names of this round's peers")
        if not all(isinstance(s, bytes) and len(s) == SEALED_BYTES for s in sealed.values()):
            raise ValueError(f"each peer's sealed shares are {SEALED_BYTES} bytes")
        if len(sealed) + 1 < self.setup.threshold:
            raise RoundAborted(
                f"only {len(sealed) + 1} workers shared keys, fewer than the threshold "
                f"{self.setup.threshold}"
            )
        self._sealed = dict(sealed)
        masked, self._vector = self._vector, None  # masked in place: the update is gone
        assert masked is not None
        expander = Expander(len(masked))
        expander.add(masked, self._seed)
        for peer in self._sealed:
            seed = agree(
                self._mask, self._roster[peer]["mask"], b"mask", _pair(self.setup, self.name, peer)
            )
            if _sign_added(self.name, peer):
                expander.add(masked, seed)
            else:
                expander.subtract(masked, seed)
        self.step = "masked"
        return masked

    def unmask(self, survivors: Any) -> dict[str, dict[str, bytes]]:
        """This worker's shares for the coordinator: of the self-mask seed of each survivor
        (`seeds`) and of the mask key of each peer that shared and then dropped (`keys`)."""
        self._begin("masked", "unmasked")
        shared = {*self._sealed, self.name}
        if not (
            isinstance(survivors, list | tuple)
            and all(isinstance(v, str) for v in survivors)
            and len(set(survivors)) == len(survivors)
        ):
            raise ValueError("the survivors are a list of distinct worker names")
        alive = set(survivors)
        if not alive <= shared or self.name not in alive:
            raise ValueError("the survivors must be workers that shared keys, this one among them")
        if len(alive) < self.setup.threshold:
            raise RoundAborted(
                f"{len(alive)} survivors are fewer than the threshold {self.setup.threshold}: "
                "no shares are given"
            )
        seeds, keys = {self.name: self._own[0]}, {}
        for peer, sealed in self._sealed.items():
            aead = ChaCha20Poly1305(self._share_key(peer))
            aad = self.setup.round + _names(peer, self.name)
            try:
                plain = aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
            except InvalidTag:
                raise ValueError(f"the shares from {peer!r} do not decrypt") from None
            if peer in alive:
                seeds[peer] = plain[: shamir.SHARE_BYTES]
            else:
                keys[peer] = plain[shamir.SHARE_BYTES :]
        self.step = "unmasked"
        return {"seeds": seeds, "keys": keys}


def check_roster(roster: Any, setup: Setup) -> dict[str, dict[str, bytes]]:
    """The roster as plain data, checked: names to two distinct 32-byte public keys."""
    if (
        not isinstance(roster, Mapping)
        or not setup.threshold <= len(roster) <= setup.encoding.clients
    ):
        raise ValueError(
            f"the roster must name between the threshold ({setup.threshold}) and "
            f"{setup.encoding.clients} workers"
        )
    checked: dict[str, dict[str, bytes]] = {}
    seen: set[bytes] = set()
    for name, keys in roster.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ValueError(f"a worker's name is a string of 1 to {MAX_NAME} characters")
        if not isinstance(keys, Mapping) or set(keys) != set(KEY_NAMES):
            raise ValueError(f"{name!r}'s roster entry must hold the keys {list(KEY_NAMES)}")
        for key in keys.values():
            if not isinstance(key, bytes) or len(key) != KEY_BYTES or key in seen:
                raise ValueError(f"{name!r}'s public keys must be distinct {KEY_BYTES}-byte keys")
            X25519PublicKey.from_public_bytes(key)
            seen.add(key)
        checked[name] = {k: keys[k] for k in KEY_NAMES}
    return checked


# ---- the coordinator's side -------------------------------------------------------------------


class Aggregation:
    """The coordinator's part in one round: it sees public keys, sealed shares, masked
    vectors and, at the end, enough shares to remove the masks of the sum, and nothing else."""

    def __init__(self, setup: Setup, length: int) -> None:
        self.setup, self.length = setup, length
        self.keys: dict[str, dict[str, bytes]] = {}
        self.shared: list[str] = []
        self.survivors: list[str] = []
        self.total = np.zeros(length, dtype=np.uint32)

    def _enough(self, count: int, what: str) -> None:
        if count < self.setup.threshold:
            raise RoundAborted(
                f"{count} workers {what}, fewer than the threshold {self.setup.threshold}: "
                "the round is aborted and nothing is unmasked"
            )

    def roster(self, advertised: Mapping[str, Any]) -> dict[str, dict[str, bytes]]:
        """The roster every worker gets: the keys of those that advertised."""
        self._enough(len(advertised), "advertised keys")
        self.keys = check_roster(dict(advertised), self.setup)
        return self.keys

    def route(self, sent: Mapping[str, Any]) -> dict[str, dict[str, bytes]]:
        """Each worker's mail: the sealed shares addressed to it by every worker that sent
        shares to all its peers."""
        complete = [
            u
            for u in sorted(sent)
            if u in self.keys
            and isinstance(sent[u], Mapping)
            and set(sent[u]) == set(self.keys) - {u}
        ]
        self._enough(len(complete), "shared keys")
        self.shared = complete
        return {v: {u: sent[u][v] for u in complete if u != v} for v in complete}

    def add(self, name: str, masked: Any) -> None:
        """One worker's masked vector, added to the running sum."""
        if name not in self.shared or name in self.survivors:
            raise ValueError(f"{name!r} did not share keys this round, or sent its input twice")
        if not (
            isinstance(masked, np.ndarray)
            and masked.dtype == np.uint32
            and masked.shape == (self.length,)
        ):
            raise ValueError(f"{name!r}'s masked input is not {self.length} uint32 ring elements")
        np.add(self.total, masked, out=self.total)
        self.survivors.append(name)

    def collected(self) -> list[str]:
        """The survivors, to be sent to each of them; aborts with fewer than t."""
        self._enough(len(self.survivors), "sent masked inputs")
        self.survivors.sort()
        return list(self.survivors)

    def unmask(self, answers: Mapping[str, Any]) -> np.ndarray:
        """The sum of the survivors' vectors, from the shares the answering survivors gave."""
        alive = set(self.survivors)
        dropped = [v for v in self.shared if v not in alive]
        good = {
            u: a
            for u, a in answers.items()
            if u in alive
            and isinstance(a, Mapping)
            and isinstance(a.get("seeds"), Mapping)
            and isinstance(a.get("keys"), Mapping)
            and set(a["seeds"]) == alive
            and set(a["keys"]) == set(dropped)
        }
        self._enough(len(good), "gave their shares")
        position = {name: i + 1 for i, name in enumerate(sorted(self.keys))}
        t = self.setup.threshold
        expander = Expander(self.length)
        total = self.total.copy()
        for v in self.survivors:
            seed = shamir.combine({position[u]: good[u]["seeds"][v] for u in good}, t)
            expander.subtract(total, seed)
        for v in dropped:
            raw = shamir.combine({position[u]: good[u]["keys"][v] for u in good}, t)
            key = X25519PrivateKey.from_private_bytes(raw)
            if key.public_key().public_bytes_raw() != self.keys[v]["mask"]:
                raise ValueError(f"the shares of {v!r}'s mask key do not reconstruct it")
            for u in self.survivors:
                seed = agree(key, self.keys[u]["mask"], b"mask", _pair(self.setup, u, v))
                if _sign_added(u, v):  # u added it: take it away
                    expander.subtract(total, seed)
                else:
                    expander.add(total, seed)
        return total


__all__ = ["Aggregation", "MaskingClient", "RoundAborted", "Setup", "check_roster"]
