"""Virtual workers: a Node in this process, reached through the real wire format by default."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tether.errors import ConnectionLostError, ObjectNotFoundError
from tether.node import Limits, Node, Store
from tether.node.policy import Release, copied
from tether.node.store import Stored
from tether.ops import PUBLISHED, OpState
from tether.remote.client import Client, Replies
from tether.remote.pointer import Pointer
from tether.remote.worker import DatasetPointers, Worker
from tether.wire import Call, Put, Value, decode_parts, encode_parts


class InProcessTransport:
    """Hands frames to a Node in the same process. With `serialize=False` the messages skip the
    codec. Either way the tensors are copied, so neither side sees the other's later changes,
    except what the node lends to a client adopting it (`model.get()`; the rule is
    `tether.node.policy.lendable`): then the client's tensor is the worker's, as a model's
    tensors are its optimizer's in plain PyTorch, so neither fetching it nor sending it back
    moves anything.

    Lending is a speed trick, and this is the only transport that asks for it
    (`Node.run(..., lend=...)`; the websocket transport ignores `adopted`). What it buys,
    measured by alternating runs before and after it landed: `bench_core.py --repeats 9`
    1.44-1.47x -> 1.38-1.40x of plain PyTorch, `bench_overhead.py` 369/380 -> 291/300 µs of
    overhead per batch (BENCHMARKS.md at 3341795, "Eleventh session")."""

    def __init__(self, node: Node, client_name: str = "local", serialize: bool = True) -> None:
        self.node = node
        self.client_name = client_name
        self.serialize = serialize
        self.closed = False

    def exchange(self, commands: list, adopted: frozenset[int] = frozenset()) -> Replies:
        if self.closed:
            raise ConnectionLostError(f"worker {self.node.name!r} is gone (it was closed)")
        if self.serialize:
            answer = self.node.run(encode_parts(commands), self.client_name, lend=adopted)
            replies = decode_parts(answer.parts())
        else:
            answer = self.node.run(
                [_copy_tensors_in(c) for c in commands], self.client_name, lend=adopted
            )
            replies = [Value(copied(r.value)) if type(r) is Value else r for r in answer.replies]
        for i, value in answer.lent.items():
            replies[i] = value
        return lambda: replies

    def close(self) -> None:
        self.closed = True
        self.node.forget(self.client_name)


def _copy_tensors_in(message: Any) -> Any:
    if isinstance(message, Put):
        return Put(message.id, copied(message.value))
    if isinstance(message, Call):
        return Call(
            message.op,
            copied(message.args),
            copied(message.kwargs),
            message.out,
            message.refs,
            message.state,
        )
    return message


class VirtualWorker(Worker):
    """A worker in this process: `sy.VirtualWorker(hook, id="bob")` or `VirtualWorker("bob")`.

    Every message goes through the real encoder and decoder unless `serialize=False`, so what
    works here works over the network. The one exception is what the worker lends to
    `model.get()` (see `InProcessTransport`): that memory is already the client's.

    `release`: the node's release policy (`tether.node.policy.Release`); "open" by default,
    as in the tutorials, where the scientist sent the data it computes on."""

    def __init__(
        self,
        hook: Any = None,
        id: str | None = None,
        *,
        serialize: bool = True,
        limits: Limits | None = None,
        release: Release | str = Release.OPEN,
    ) -> None:
        if isinstance(hook, str) and id is None:
            hook, id = None, hook
        self.id = id or "worker"
        self.node = Node(self.id, limits=limits, release=release)
        self.client = Client(self, InProcessTransport(self.node, "local", serialize))

    @property
    def store(self) -> Store:
        """The objects this worker holds for us (after running everything queued)."""
        self.client.flush()
        return self.node.store("local")

    def publish(self, key: str, value: Any, **policy: Any) -> None:
        """As the owner: make `value` reachable under `key` (private unless private=False)."""
        self.node.publish(key, value, **policy)

    @property
    def _objects(self) -> dict[int, Any]:
        """PySyft's view of what the worker holds for us, by id (after running what is
        queued): the data, not the state features keep there (`tether.ops.OpState`)."""
        return {
            obj_id: stored.value
            for obj_id, stored in self.store.objects.items()
            if not isinstance(stored.value, OpState)
        }

    def search(self, *query: str) -> list[Pointer]:
        """PySyft's `worker.search(...)`: pointers to what this worker's owner published with
        every one of these tags (`publish(..., tags=...)`), in the order published."""
        wanted = set(query)
        return [
            self.client.call(
                PUBLISHED, [key], kind="tensor" if isinstance(found.value, Tensor) else "object"
            )
            for key, found in self.node.published.items()
            if wanted <= set(found.tags)
        ]

    def clear_objects(self) -> VirtualWorker:
        """Forget everything the worker holds for us; pointers to it then name nothing."""
        self.store.clear()
        return self

    # ---- pointer chains (tether.remote.chain): what only a worker in this process holds ----

    def hold(self, pointer: Any) -> int:
        """Keep a pointer to another worker's object (a pointer chain's middle); its id here."""
        obj_id = self.client.new_id()
        self.store.put(obj_id, Stored(pointer))
        return obj_id

    def held(self, obj_id: int) -> Any:
        stored = self.store.objects.get(obj_id)
        if stored is None:
            raise ObjectNotFoundError(
                f"worker {self.id!r} holds no pointer {obj_id} (freed, or its objects cleared)",
                op="use",
                worker=self.id,
            )
        return stored.value

    def unhold(self, obj_id: int) -> Any:
        """Give back a pointer this worker held (it no longer holds it)."""
        value = self.held(obj_id)
        self.store.delete(obj_id)
        return value

    def __repr__(self) -> str:
        return f"<VirtualWorker {self.id!r}>"


__all__ = ["DatasetPointers", "InProcessTransport", "VirtualWorker", "Worker"]
