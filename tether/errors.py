"""Every error tether raises on purpose derives from `TetherError`: callers catch one type."""

from __future__ import annotations


class TetherError(Exception):
    """Base class of all tether errors."""


class WireError(TetherError):
    """A frame could not be decoded: it is malformed, truncated, oversized or of another version."""


class NotAllowedError(TetherError):
    """A remote call named a path that is not in the allowlist, or a refused attribute."""


class LimitError(TetherError):
    """A command would exceed a limit the node enforces (allocation size, stored bytes, ...)."""


class RemoteError(TetherError):
    """A command failed on a worker. Carries the op, the worker and the original error text."""

    def __init__(self, message: str, *, op: str = "", worker: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.op = op
        self.worker = worker
        self.kind = kind


class ObjectNotFoundError(RemoteError):
    """A pointer names an object the worker no longer holds (freed, moved, or never sent)."""


class PermissionDeniedError(RemoteError):
    """The object's policy does not let it leave the worker without an accepted request."""


class RequestPendingError(PermissionDeniedError):
    """A request for a private object was filed and waits for the owner's answer."""


class PoisonedValueError(RemoteError):
    """A computation on private data failed; the owner's node keeps the cause, and the value
    that should have been computed is poisoned (a strict node reports no failure otherwise)."""


class WorkerMismatchError(TetherError):
    """One operation mixed pointers that live on different workers."""


class ConnectionLostError(TetherError):
    """The worker went away, or did not answer within the timeout."""


class DatasetError(TetherError):
    """A dataset file is missing, corrupt, or inconsistent; the message names the file."""


class FederationError(TetherError):
    """A federated run cannot go on: too few workers answered, or the checkpoint does not fit."""
