"""What every worker handle offers, wherever the worker runs (in process, over a websocket, a
Duet): its `id`, the `client` that talks to it, and pointers to what its owner published."""

from __future__ import annotations

from typing import NamedTuple

from tether.ops import PUBLISHED
from tether.remote.client import Client
from tether.remote.pointer import Pointer


class DatasetPointers(NamedTuple):
    """Pointers to a published dataset's samples and labels."""

    data: Pointer
    targets: Pointer


class Worker:
    """What every worker handle offers, wherever the worker runs: an `id`, the `client` that
    talks to it, and pointers to what its owner published."""

    id: str
    client: Client

    @property
    def _objects(self) -> dict:
        raise AttributeError(
            f"_objects lists what a worker in this process (VirtualWorker) holds; {self!r} runs "
            "elsewhere and its store is its owner's: keep the pointers you made"
        )

    def clear_objects(self) -> Worker:
        raise AttributeError(
            f"clear_objects() clears a worker in this process (VirtualWorker); {self!r} runs "
            "elsewhere: drop your pointers (or close() the connection) to free what it holds"
        )

    def flush(self) -> None:
        """Run everything queued; raise the first remote error."""
        self.client.flush()

    def published(self, key: str, item: int | None = None) -> Pointer:
        """A pointer to what the owner published under `key` (or to item `item` of it)."""
        return self.client.call(
            PUBLISHED,
            [key] if item is None else [key, item],
            kind="object" if item is None else "tensor",
        )

    def dataset(self, key: str) -> DatasetPointers:
        """Pointers to a dataset published as `(data, targets)`, as `tether worker` does."""
        return DatasetPointers(self.published(key, 0), self.published(key, 1))

    def close(self) -> None:
        """Disconnect: the worker frees what this client stored, and further use raises."""
        self.client.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
