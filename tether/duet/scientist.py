"""The data scientist's side of a Duet: what `sy.join_duet()` returns.

`duet.torch` is torch on the owner's machine (every call gives a pointer), `duet.python` makes
Python values there, and `duet.store` lists and reaches what the owner published. The owner's
data and everything computed from it come back only through requests:
`ptr.get(request_block=True, name=..., reason=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tether.duet import catalog
from tether.duet.budget import BUDGET
from tether.duet.names import CATALOG
from tether.ops import ALLOWLIST, PUBLISHED
from tether.remote.client import Client, Transport
from tether.remote.pointer import Pointer, remote_call
from tether.wire import Call, Ref

# torch's DataLoader, as the scientist names it; the node runs tether's restricted one.
LOADER = "torch.utils.data.DataLoader"
_ALIASES = {LOADER: "tether.data.DataLoader"}
# Every dotted prefix of a path the scientist may name: `duet.torch.nn` leads somewhere,
# `duet.torch.os` does not.
_PREFIXES = frozenset(
    path.rsplit(".", n)[0]
    for path in (*ALLOWLIST, *_ALIASES)
    for n in range(1, path.count(".") + 1)
)


class ScientistDuet:
    """A joined Duet, seen from the scientist's side: a worker (`model.send(duet)`,
    `tensor.send(duet)`) with `.torch`, `.python` and `.store`."""

    def __init__(self, transport: Transport, worker_id: str, client_id: str) -> None:
        self.id = worker_id
        self.client_id = client_id
        self.client = Client(self, transport)
        self.torch = RemoteTorch(self.client, "torch")
        self.python = RemotePython(self.client)
        self.store = RemoteStore(self.client)

    @property
    def budget(self) -> list[dict[str, Any]]:
        """The privacy budgets the owner granted you: per grant, ε and δ, what you spent
        (`ptr.publish(...)`) and what remains."""
        return self.client.call(BUDGET, [], kind="object").get()  # type: ignore[union-attr]

    def flush(self) -> None:
        """Wait until everything sent has run; raise the first remote error."""
        self.client.flush()

    def close(self) -> None:
        """Leave the duet; the owner's node frees everything you made there."""
        self.client.close()

    def __enter__(self) -> ScientistDuet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ScientistDuet {self.id} as {self.client_id}>"


class RemoteTorch:
    """`duet.torch`: attribute chains resolve to allowlisted paths (`duet.torch.nn.functional.
    nll_loss`); calling one runs it on the owner's node and gives a pointer."""

    __slots__ = ("_client", "_path")

    def __init__(self, client: Client, path: str) -> None:
        self._client = client
        self._path = path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        path = f"{self._path}.{name}"
        if path in ALLOWLIST or path in _ALIASES:
            return RemoteFunction(self._client, path)
        if path in _PREFIXES:
            return RemoteTorch(self._client, path)
        raise AttributeError(
            f"{path} is not in tether's allowlist, so the owner's node does not "
            "run it (tether/ops/table.py lists what it runs)"
        )

    def __repr__(self) -> str:
        return f"<remote {self._path} on {self._client.name}>"


class RemoteFunction:
    """An allowlisted function on the owner's node; calling it gives a pointer to the result."""

    __slots__ = ("client", "path")

    def __init__(self, client: Client, path: str) -> None:
        self.client = client
        self.path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.path == LOADER:
            return RemoteDataLoader(self.client, *args, **kwargs)
        args = tuple(_listed(a) for a in args)  # model.parameters() is a generator
        kwargs = {k: _listed(v) for k, v in kwargs.items()}
        return remote_call(self.path, list(args), kwargs, client=self.client)

    def __repr__(self) -> str:
        return f"<remote {self.path} on {self.client.name}>"


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, Iterator) else value


class RemotePython:
    """`duet.python`: Python values made on the owner's node, to compute on there."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def Float(self, value: Any = 0.0) -> Pointer:
        return self._make("builtins.float", value)

    def Int(self, value: Any = 0) -> Pointer:
        return self._make("builtins.int", value)

    def List(self, items: Any = ()) -> Pointer:
        return self._make("builtins.list", list(items))

    def Dict(self, items: Any = ()) -> Pointer:
        return self._make("builtins.dict", dict(items))

    def _make(self, path: str, value: Any) -> Pointer:
        return remote_call(path, [value], {}, client=self._client)


class StorePointer(Pointer):
    """A pointer to something the owner published. Its length is the owner's to give:
    `ptr.len().get(request_block=True, name=..., reason=...)`; once given, `len(ptr)` works
    (and loaders over it know how many batches they have)."""

    __slots__ = ("length",)

    def __init__(self, client: Client, obj_id: int, kind: str) -> None:
        super().__init__(client, obj_id, kind)
        self.length: int | None = None

    def len(self) -> Pointer:
        """A pointer to the remote length (`.get()` it: a request like any other value)."""
        obj_id = self._client.new_id()
        self._client.submit(Call("builtins.len", [Ref(self.id)], {}, obj_id))
        return _LengthPointer(self._client, obj_id, self)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(
                "the length of what the owner published is private: request it with "
                "ptr.len().get(request_block=True, name=..., reason=...)"
            )
        return self.length


class _LengthPointer(Pointer):
    """The remote length of a StorePointer, which learns it once fetched."""

    __slots__ = ("_of",)

    def __init__(self, client: Client, obj_id: int, of: StorePointer) -> None:
        super().__init__(client, obj_id, "object")
        self._of = of

    def get(self, *args: Any, **kwargs: Any) -> Any:
        value = super().get(*args, **kwargs)
        if isinstance(value, int):
            self._of.length = value
        return value


class RemoteDataLoader:
    """`duet.torch.utils.data.DataLoader(duet.store[...], batch_size=64, shuffle=True)`: batches
    made on the owner's node. Iterating gives `(data_ptr, target_ptr)` pairs without waiting;
    how many depends on the dataset's length, so that must have been requested first."""

    def __init__(
        self,
        client: Client,
        dataset: Pointer,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.pointer = remote_call(
            _ALIASES[LOADER],
            [dataset],
            {"batch_size": self.batch_size, "shuffle": bool(shuffle), "drop_last": self.drop_last},
            client=client,
        )

    def __len__(self) -> int:
        n = self.dataset.length if isinstance(self.dataset, StorePointer) else None
        if n is None:
            raise TypeError(
                "how many batches this loader gives depends on the dataset's length, "
                "which its owner keeps private: request it first with "
                "dataset_ptr.len().get(request_block=True, name=..., reason=...)"
            )
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Pointer, Pointer]]:
        batches = len(self)
        client = self.pointer.client
        iterator = remote_call("builtins.iter", [self.pointer], {})
        for _ in range(batches):
            batch = remote_call("builtins.next", [iterator], {})
            yield tuple(
                client.call("operator.getitem", [Ref(batch.id), i], kind="tensor") for i in (0, 1)
            )  # type: ignore[misc]


class RemoteStore:
    """`duet.store`: what the owner published. `.pandas` lists id, tags and description;
    `[position | id | tag]` gives a pointer."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def catalog(self) -> list[dict]:
        """The owner's catalog, as it is now."""
        return self._client.call(PUBLISHED, [CATALOG], kind="object").get()  # type: ignore[union-attr]

    @property
    def pandas(self) -> Any:
        return catalog.table(self.catalog())

    def __len__(self) -> int:
        return len(self.catalog())

    def __getitem__(self, key: int | str) -> StorePointer:
        found = catalog.select(self.catalog(), key)
        obj_id = self._client.new_id()
        self._client.submit(Call(PUBLISHED, [found["id"]], {}, obj_id))
        self._client.flush()  # its kind (tensor or not) decides which methods it has
        meta = self._client.known_meta(obj_id)
        return StorePointer(self._client, obj_id, meta[0] if meta else "object")

    def __repr__(self) -> str:
        return repr(self.pandas)
