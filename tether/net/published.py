"""Reaching what a worker's owner published (`node.publish(key, ...)`) through pointers.

A client asks for `Call("tether.published", [key] or [key, part], {}, out)`; the node stores the
published object (or item `part` of it) under the client's `out` id with the owner's privacy and
read-only flags, so the client computes on it but cannot fetch or change it. The node-side half
is a prototype here (`PublishingNode`) until `Node` answers the op itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tether.client import Client
from tether.node import Node, Stored
from tether.node.node import _meta
from tether.pointer import Pointer
from tether.wire import Call, Done, Failure

PUBLISHED = "tether.published"


class DatasetPointers(NamedTuple):
    """Pointers to a published dataset's samples and labels."""

    data: Pointer
    targets: Pointer


def published_pointer(client: Client, key: str, part: int | None = None) -> Pointer:
    """A pointer to the object published under `key` (or to item `part` of it)."""
    args: list[Any] = [key] if part is None else [key, part]
    pointer = client.call(PUBLISHED, args, kind="object" if part is None else "tensor")
    assert pointer is not None
    return pointer


def dataset_pointers(client: Client, key: str) -> DatasetPointers:
    """Pointers to a dataset published as `(data, targets)` (as `tether worker` does)."""
    return DatasetPointers(published_pointer(client, key, 0), published_pointer(client, key, 1))


class PublishingNode(Node):
    """A Node that answers `tether.published`; everything else is Node's."""

    def execute(self, commands: list, client: str = "local") -> list:
        if not any(_asks_published(c) for c in commands):
            return super().execute(commands, client)
        return [self._published(c, client) if _asks_published(c)
                else super().execute([c], client)[0] for c in commands]

    def _published(self, cmd: Call, client: str) -> Done | Failure:
        store = self.store(client)
        try:
            value, entry = self._lookup_published(cmd.args)
            if cmd.out is None:
                return Done()
            store.put(cmd.out, Stored(value, entry.privacy, readonly=True, tags=entry.tags,
                                      description=entry.description))
            return Done(_meta(value))
        except _Refusal as exc:
            failure = Failure(exc.kind, str(exc))
        except MemoryError as exc:
            failure = Failure("LimitError", str(exc))
        if cmd.out is not None:
            store.mark_failed(cmd.out, f"{PUBLISHED}: {failure.message}")
        return failure

    def _lookup_published(self, args: list) -> tuple[Any, Stored]:
        if not (1 <= len(args) <= 2 and isinstance(args[0], str)
                and (len(args) == 1 or type(args[1]) is int)):
            raise _Refusal("TypeError", f"{PUBLISHED} takes a key and an optional item index")
        entry = self.published.get(args[0])
        if entry is None:
            keys = ", ".join(sorted(self.published)) or "nothing"
            raise _Refusal("ObjectNotFoundError", f"worker {self.name!r} publishes no "
                                                  f"{args[0]!r} (it publishes: {keys})")
        if len(args) == 1:
            return entry.value, entry
        items = entry.value
        if not (isinstance(items, tuple | list) and -len(items) <= args[1] < len(items)):
            raise _Refusal("ObjectNotFoundError", f"{args[0]!r} on worker {self.name!r} has "
                                                  f"no item {args[1]}")
        return items[args[1]], entry


class _Refusal(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _asks_published(cmd: Any) -> bool:
    return isinstance(cmd, Call) and cmd.op == PUBLISHED
