"""Pointers: local handles to objects that live on a worker.

A pointer behaves like the object it names: operators, Tensor methods and torch functions
(through `__torch_function__`) on it run remotely and give pointers to their results at once.
Only `.get()` and what needs the worker's answer (`.shape` of a result not yet seen) wait.

Long because a pointer stands in for every kind of remote object (tensor, module, optimizer,
plain object) and predicts each call's result kind locally, so calls pipeline; the calls
themselves are one table lookup each (`remote_call`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tether import errors
from tether.ops import ALLOWLIST, PATH_OF
from tether.wire import Ref

if TYPE_CHECKING:
    from tether.remote.client import Client

# The namespace in which a pointer's methods are looked up, by the kind of object it names.
_NAMESPACES = {
    "tensor": "torch.Tensor",
    "module": "torch.nn.Module",
    "optimizer": "torch.optim.Optimizer",
    "scheduler": "torch.optim.lr_scheduler.LRScheduler",
}
# Methods and attributes that give Python values, not tensors.
_SCALAR_RESULTS = {
    "item",
    "tolist",
    "numel",
    "dim",
    "size",
    "nelement",
    "element_size",
    "is_contiguous",
    "is_floating_point",
    "is_complex",
    "equal",
    "allclose",
    "shape",
    "dtype",
    "requires_grad",
    "is_leaf",
    "ndim",
    "device",
    "is_tensor",
    "get_default_dtype",
    "is_grad_enabled",
    "is_available",
    "device_count",
    "training",
    "stride",
    "manual_seed",
}
# Calls whose result is None (or self): nothing to store.
_NO_RESULT = {
    "torch.Tensor.backward",
    "torch.optim.Optimizer.step",
    "torch.optim.Optimizer.zero_grad",
    "torch.nn.Module.zero_grad",
    "tether.assign",
    "tether.optim.set_hyperparameters",
    "operator.setitem",
    "torch.autograd.backward",
    "torch.optim.lr_scheduler.LRScheduler.step",
}


class Pointer:
    """A handle to an object on a worker. Free it by dropping it: the worker forgets the object
    once the last pointer to it is garbage-collected."""

    __slots__ = ("__weakref__", "_client", "_kind", "_live", "_touches", "id")

    if TYPE_CHECKING:  # attached below the class, with the operators

        def __getitem__(self, key: Any) -> Pointer: ...
        def __setitem__(self, key: Any, value: Any) -> None: ...

    def __init__(self, client: Client, obj_id: int, kind: str = "tensor") -> None:
        self._client = client
        self.id = obj_id
        self._kind = kind
        self._live = True
        self._touches = 0  # how many commands have named this object (see hook.py)

    def __del__(self) -> None:
        if getattr(self, "_live", False):
            try:  # noqa: SIM105 (suppress() costs more, and this runs for every pointer)
                self._client.release(self.id)
            except Exception:  # at interpreter shutdown there is nothing to free
                pass

    # ---- where it is --------------------------------------------------------------------------

    @property
    def location(self) -> Any:
        """The worker that holds the object."""
        return self._client.worker

    @property
    def id_at_location(self) -> int:
        return self.id

    @property
    def client(self) -> Client:
        return self._client

    @property
    def kind(self) -> str:
        meta = self._client.known_meta(self.id)
        return meta[0] if meta else self._kind

    # ---- what is known locally ----------------------------------------------------------------

    def _tensor_meta(self) -> list:
        meta = self._client.known_meta(self.id)
        if meta is None and self._live:
            self._client.flush()  # the description comes with the reply, if the node gives one
            meta = self._client.known_meta(self.id)
        if meta is None:  # the node describes nothing computed from its owner's private data
            meta = ["tensor", None]
        if meta[0] != "tensor":
            raise AttributeError(
                f"the object on {self._client.name!r} is a {meta[1]}, not a tensor"
            )
        if meta[1] is None:  # a strict owner keeps the sizes of its data to itself
            raise errors.PermissionDeniedError(
                f"the shape and dtype of tensor {self.id} on {self._client.name!r} are private to "
                "its owner (it holds or was computed from their data); compute on it through the "
                "pointer",
                op="shape",
                worker=self._client.name,
            )
        return meta

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._tensor_meta()[1])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self._tensor_meta()[2])

    @property
    def requires_grad(self) -> bool:
        return bool(self._tensor_meta()[3])

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self._client.call("torch.Tensor.requires_grad_", [Ref(self.id), bool(value)], kind=None)
        meta = self._client.known_meta(self.id)
        if meta is not None:
            meta[3] = bool(value) and meta[2].startswith(("float", "complex", "bfloat"))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __len__(self) -> int:
        meta = self._client.meta(self.id)
        if meta[0] == "tensor":
            shape = self.shape
            if not shape:
                raise TypeError("len() of a 0-d tensor")
            return shape[0]
        if len(meta) > 2:
            return meta[2]
        raise TypeError(f"the {meta[1]} on {self._client.name!r} has no length")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self) -> bool:
        raise TypeError("the truth of a remote value is not known here: .get() it first")

    def __repr__(self) -> str:
        meta = self._client.known_meta(self.id) if self._live else None
        where = f"on {self._client.name} (id {self.id})"
        if not self._live:
            return f"<Pointer, spent by .get() or .move(), {where}>"
        if meta is None:
            return f"<Pointer to a {self._kind} {where}>"
        if meta[0] == "tensor":
            shape = "[private shape]" if meta[1] is None else list(meta[1])
            return f"<Pointer to Tensor{shape} {meta[2]} {where}>"
        return f"<Pointer to {meta[1]} {where}>"

    # ---- fetching -----------------------------------------------------------------------------

    def get(
        self,
        request_block: bool = False,
        name: str = "",
        reason: str = "",
        timeout_secs: float = 30.0,
        *,
        delete: bool = True,
    ) -> Any:
        """Bring the value here; by default the worker then forgets it and this pointer is spent.

        Where the object's policy asks for the owner's approval, this files a request (with
        `name` and `reason`). With `request_block=True` it waits up to `timeout_secs` for the
        answer and returns None if the request is denied or times out; without, it raises
        PermissionDeniedError (RequestPendingError while the owner has not answered)."""
        self._check_live()
        wait = max(float(timeout_secs), 0.0) if request_block else 0.0
        client = self._client
        ids = [self.id]
        grad = None
        if client.has_grad(self.id):  # its .grad comes along, in the same round trip
            grad = client.call("torch.Tensor.grad", [self.id], kind="tensor", refs=1)
            ids.append(grad.id)
        freed = False  # whether the get freed the grad's id with the tensor's
        try:
            values = client.get(ids, delete=delete, name=name, reason=reason, wait=wait)
            freed = delete
        except errors.PermissionDeniedError:
            if request_block:
                return None
            raise
        finally:
            if grad is not None:
                grad._live = False
                if not freed:
                    client.release(grad.id)
        value = values[0]
        if grad is not None and isinstance(value, torch.Tensor) and values[1] is not None:
            value.grad = values[1]
        if delete:
            self._live = False
        return value

    def request(self, name: str = "", reason: str = "") -> str:
        """Ask the owner for this object without waiting: "pending", "accepted" or "denied".
        Once accepted, `.get()` brings it (once)."""
        return remote_call("tether.request", [self, name, reason], {}).get()

    def copy(self) -> Pointer:
        """A pointer to a new, independent copy of the tensor on the same worker."""
        if self.kind != "tensor":
            raise TypeError(f"only tensors are copied remotely; this is a {self.kind}")
        return remote_call("torch.Tensor.clone", [self], {})

    def move(self, worker: Any, requires_grad: bool = False) -> Pointer:
        """Move the object to another worker (through here); this pointer is spent."""
        if _mover is None or _chainer is None:
            raise RuntimeError("import tether.remote first: it sets how pointers move")
        return _mover(self, worker, requires_grad)

    def send(self, worker: Any) -> Any:
        """Send this pointer to a worker in this process, which then holds it (PySyft's
        pointer to a pointer, `tether.remote.chain`); this pointer is spent. To move the data
        itself, `move(worker)`."""
        if _chainer is None:
            raise RuntimeError("import tether.remote first: it sets how pointers are sent")
        return _chainer(self, worker)

    def remote_get(self) -> Any:
        raise TypeError(
            f"remote_get() brings data one hop along a pointer chain; this pointer names an "
            f"object on {self._client.name!r} itself: .get() it, or .move() it to a worker"
        )

    @property
    def owner(self) -> LocalWorker:
        """The worker that holds the pointer: this process (PySyft's `sy.local_worker`)."""
        return LOCAL_WORKER

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        """A differentially private aggregate of the published data this names, noised by its
        owner within the privacy budget they granted you: `ptr.publish("mean", bounds=(0, 1),
        sigma=20.0)` (tether.duet.budget.publish has the arguments)."""
        if _publisher is None:
            raise RuntimeError("import tether.privacy.dp first: it sets how pointers publish")
        return _publisher(self, *args, **kwargs)

    def leave_on_worker(self) -> int:
        """Let this pointer go without freeing its object, which then stays on the worker
        until the client leaves (state a feature keeps for the session); its id."""
        self._live = False
        return self.id

    def _check_live(self) -> None:
        if not self._live:
            raise errors.ObjectNotFoundError(
                f"this pointer to object {self.id} on {self._client.name!r} was spent by .get() "
                "or .move(); keep the returned value or pointer instead",
                op="use",
                worker=self._client.name,
            )

    # ---- remote calls -------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        namespace = _NAMESPACES.get(self.kind)
        entry = ALLOWLIST.get(f"{namespace}.{name}") if namespace else None
        if entry is None:
            path = f"{namespace}.{name}" if namespace else name
            raise AttributeError(
                f"{path!r} is not a remote attribute tether allows "
                f"(pointer to a {self.kind} on {self._client.name!r})"
            )
        if isinstance(entry.fn, operator.attrgetter):
            return remote_call(entry.path, [self], {})
        return _RemoteMethod(self, entry.path)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return remote_call("torch.nn.Module.call", [self, *args], kwargs)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise errors.NotAllowedError(
            "a pointer cannot be pickled or saved (torch.save): "
            ".get() the value first, or keep the pointer in memory"
        )

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        path = PATH_OF.get(id(func))
        if path is None:
            name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
            found: list = [None, False]
            _to_wire([list(args), kwargs or {}], name, found, count=False)
            where = f" on worker {found[0].name!r}" if found[0] else ""
            raise errors.NotAllowedError(
                f"{name} is not in tether's allowlist, so it cannot run{where} "
                "(add it to tether/ops/table.py, with a test, if it is safe)"
            )
        return remote_call(path, list(args), kwargs or {})


class _RemoteMethod:
    """`ptr.view` before it is called: calling it queues `torch.Tensor.view(ptr, ...)`."""

    __slots__ = ("path", "pointer")

    def __init__(self, pointer: Pointer, path: str) -> None:
        self.pointer = pointer
        self.path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return remote_call(self.path, [self.pointer, *args], kwargs)


def remote_call(path: str, args: list, kwargs: dict, client: Client | None = None) -> Any:
    """Run `path` where the pointers among its arguments live (on `client`'s worker when given:
    calls without pointers, such as `torch.cuda.is_available()`, need it); a pointer to the
    result. Local tensors among the arguments travel with the command."""
    found: list = [client, False]  # the worker's client, whether a local tensor travels
    wire_args, refs = [], 0
    for i, arg in enumerate(args):  # pointers among them travel as plain ids (see Call.refs)
        if isinstance(arg, Pointer):
            wire_args.append(_pointer_id(arg, path, found))
            refs |= 1 << i
        else:
            wire_args.append(_to_wire(arg, path, found))
    wire_kwargs = {k: _to_wire(v, path, found) for k, v in kwargs.items()} if kwargs else {}
    client, carries_tensor = found
    if client is None:
        raise TypeError(f"{path} got no pointer, so there is no worker to run it on")
    in_place = _IN_PLACE_PATHS.get(path)
    if in_place is None:
        in_place = _IN_PLACE_PATHS[path] = path.endswith("_") or path in _NO_RESULT
    kind = None if in_place else _result_kind(path, args)
    result = client.call(path, wire_args, wire_kwargs, kind=kind, flush=carries_tensor, refs=refs)
    if path == "torch.Tensor.backward":
        for callback in _after_backward:
            callback(client)
    if path.endswith("_") and isinstance(args[0], Pointer):
        return args[0]
    return result


# Whether each path (as met) changes its first argument or gives nothing to store.
_IN_PLACE_PATHS: dict[str, bool] = {}


def get_all(pointers: list[Pointer], *, adopt: bool = False) -> list[Any]:
    """Fetch several objects of one worker in one round trip; the pointers are spent.
    `adopt`: the caller takes the values as its own and never changes them in place, so a
    worker in this process may hand over its memory rather than copies (`Client.get`)."""
    if not pointers:
        return []
    client = pointers[0].client
    if any(p.client is not client for p in pointers):
        raise errors.WorkerMismatchError("get_all fetches from one worker at a time")
    for p in pointers:
        p._check_live()
    values = client.get([p.id for p in pointers], delete=True, adopt=adopt)
    for p in pointers:
        p._live = False
    return values


def _to_wire(value: Any, path: str, found: list, count: bool = True) -> Any:
    """Pointers become Refs (all on one worker: its client goes in `found[0]`); the rest is as
    is (`found[1]` says whether a local tensor is among it)."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Pointer):
        return Ref(_pointer_id(value, path, found, count))
    if isinstance(value, torch.Tensor):
        found[1] = True
        return value
    if isinstance(value, list | tuple):
        items = [_to_wire(v, path, found, count) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        for key in value:
            if type(key) is not str:  # a node refuses them (and the frame they come in)
                raise TypeError(
                    f"{path} got a dict with a key of type {type(key).__name__} "
                    f"({key!r}): the keys of a dict sent to a worker must be strings"
                )
        return {k: _to_wire(v, path, found, count) for k, v in value.items()}
    if isinstance(value, torch.nn.Module):
        raise TypeError(f"{path} got a local {type(value).__name__}: send it to the worker first")
    return value


def _pointer_id(pointer: Pointer, path: str, found: list, count: bool = True) -> int:
    """The id of a live pointer on the same worker as the others of the call (see _to_wire)."""
    if not pointer._live:
        pointer._check_live()
    if found[0] is None:
        found[0] = pointer._client
    elif pointer._client is not found[0]:
        raise errors.WorkerMismatchError(
            f"{path} mixes objects on {found[0].name!r} and {pointer._client.name!r}; "
            f".move() one of them to the other worker first"
        )
    pointer._touches += count
    return pointer.id


_PLAIN = frozenset((int, float, bool, str, type(None)))
# Each path's result kind when its arguments do not decide it ("" when they do), as worked out.
_KINDS: dict[str, str] = {}


def _result_kind(path: str, args: list) -> str:
    """What a call will most likely give, so methods on its pointer resolve without waiting."""
    kind = _KINDS.get(path)
    if kind is None:
        kind = _KINDS[path] = _path_kind(path)
    if kind:
        return kind
    tensor_args = any(
        isinstance(a, torch.Tensor) or (isinstance(a, Pointer) and a.kind == "tensor") for a in args
    )
    return "tensor" if tensor_args else "object"


def _path_kind(path: str) -> str:
    module, _, name = path.rpartition(".")
    if module == "torch.nn" and name[:1].isupper():
        return "module"
    if module == "torch.optim" and name[:1].isupper():
        return "optimizer"
    if module == "torch.optim.lr_scheduler" and name[:1].isupper():
        return "scheduler"
    if name in _SCALAR_RESULTS or module in ("builtins", "tether.data"):
        return "object"
    return "tensor" if module.startswith(("torch", "tether")) else ""


def _operator(name: str, reflected: bool = False):
    path = f"operator.{name}"

    def method(self: Pointer, other: Any) -> Any:
        return remote_call(path, [other, self] if reflected else [self, other], {})

    return method


def _unary(name: str):
    path = f"operator.{name}"
    return lambda self: remote_call(path, [self], {})


def _in_place(name: str, fallback: str):
    """`ptr += y`: in place on a remote tensor; on a remote Python value (a float, a list), the
    plain operator gives a new value, as Python does for immutable ones."""
    path = f"torch.Tensor.{name}"

    def method(self: Pointer, other: Any) -> Any:
        if self.kind == "tensor":
            return remote_call(path, [self, other], {})
        return remote_call(f"operator.{fallback}", [self, other], {})

    return method


for _dunder, _name in {
    "add": "add",
    "sub": "sub",
    "mul": "mul",
    "truediv": "truediv",
    "floordiv": "floordiv",
    "mod": "mod",
    "pow": "pow",
    "matmul": "matmul",
    "and": "and_",
    "or": "or_",
    "xor": "xor",
    "lshift": "lshift",
    "rshift": "rshift",
}.items():
    setattr(Pointer, f"__{_dunder}__", _operator(_name))
    setattr(Pointer, f"__r{_dunder}__", _operator(_name, reflected=True))
for _dunder in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Pointer, f"__{_dunder}__", _operator(_dunder))
for _dunder in ("neg", "pos", "abs", "invert"):
    setattr(Pointer, f"__{_dunder}__", _unary(_dunder))
for _dunder, _name in {"iadd": "add_", "isub": "sub_", "imul": "mul_", "itruediv": "div_"}.items():
    setattr(Pointer, f"__{_dunder}__", _in_place(_name, _dunder[1:]))
Pointer.__getitem__ = _operator("getitem")  # type: ignore[method-assign]
Pointer.__setitem__ = lambda self, key, value: remote_call(  # type: ignore[method-assign]
    "operator.setitem", [self, key, value], {}
)
Pointer.__hash__ = object.__hash__  # type: ignore[method-assign]

PointerTensor = Pointer  # the name PySyft users know


class LocalWorker:
    """PySyft's `sy.local_worker` ("me"): this process, the owner of every pointer. It holds
    no objects: tensors here are plain torch tensors."""

    id = "me"

    @property
    def _objects(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return "<LocalWorker 'me'>"


LOCAL_WORKER = LocalWorker()


# ---- extension points: filled from above (tether.remote.autograd, .chain), never imported here

_after_backward: list[Callable[[Client], None]] = []
_mover: Callable[[Pointer, Any, bool], Pointer] | None = None
_chainer: Callable[[Pointer, Any], Any] | None = None
_publisher: Callable[..., Any] | None = None


def on_backward(callback: Callable[[Client], None]) -> None:
    """Run `callback(client)` after every remote `backward()` queued on `client`'s worker."""
    _after_backward.append(callback)


def set_mover(move: Callable[[Pointer, Any, bool], Pointer]) -> None:
    """How `Pointer.move` moves an object between workers (autograd records the edge)."""
    global _mover
    _mover = move


def set_chainer(chain: Callable[[Pointer, Any], Any]) -> None:
    """How `Pointer.send` gives a worker in this process the pointer (tether.remote.chain)."""
    global _chainer
    _chainer = chain


def set_publisher(publish: Callable[..., Any]) -> None:
    """How `Pointer.publish` releases a DP aggregate (tether.privacy.dp.release)."""
    global _publisher
    _publisher = publish
