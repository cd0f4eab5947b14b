"""What tether adds to torch: `Tensor.send`, `Module.send/get/location`, remote optimizer steps,
and gradients that flow back across `move(..., requires_grad=True)`.

`model.send(worker)` swaps the module's parameters for pointers *in place*, so optimizers made
before it keep working: their `step()` and `zero_grad()` run on a mirror of the optimizer kept
on the worker (so its state — momentum, Adam moments — stays where that worker trains). While
the module is away, its local tensors stand for their copies there (`_Away`), so a list of
`model.parameters()` taken before the send acts as pointers, as in PySyft.
Each parameter keeps its copy on each worker it visited; sending it again transfers nothing
when neither side changed since the last `model.get()`.

Long because it hooks three kinds of torch object (tensors, modules, optimizers), and each
keeps the bookkeeping that lets it move without needless copies: the copies per worker, the
optimizer mirrors, and which local parameter each pointer of a sent module stands for.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from tether import errors
from tether.ops import ALLOWLIST
from tether.remote.client import Client, client_of
from tether.remote.pointer import Pointer, remote_call
from tether.wire import Ref

M = TypeVar("M", bound=nn.Module)

# ---- tensors --------------------------------------------------------------------------------


def send_tensor(
    tensor: torch.Tensor, worker: Any, *args: Any, requires_grad: bool | None = None, **options: Any
) -> Any:
    """`tensor.send(worker)`: a pointer to a copy of the tensor on the worker. A destination that
    keeps what is sent to it (an owner's duet publishes it) receives it with the options."""
    receive = getattr(worker, "receive", None)
    if receive is not None:
        return receive(tensor, *args, **options)
    if args or options:
        raise TypeError(
            f"send to a worker takes requires_grad= only, got {[*map(repr, args), *options]}"
        )
    if isinstance(worker, list | tuple):
        raise TypeError("send to one worker at a time (federate() splits data across several)")
    value = tensor.detach()
    wants_grad = tensor.requires_grad if requires_grad is None else requires_grad
    if wants_grad and (value.is_floating_point() or value.is_complex()):
        value.requires_grad_(True)
    client = client_of(worker)
    pointer = client.put(value)
    grad = tensor.grad if tensor.is_leaf else None
    if grad is not None and value.requires_grad:  # its .grad travels too (a fresh leaf's
        # backward with that gradient sets .grad to it)
        client.call(
            "torch.Tensor.backward", [pointer.id, grad.detach()], kind=None, refs=1, flush=True
        )
    return pointer


# ---- modules --------------------------------------------------------------------------------


@dataclass
class _RemoteCopy:
    """A local tensor's copy on one worker, and `synced`: the state in which both last held the
    same values (None: unknown, so sending must transfer)."""

    pointer: Pointer
    synced: _Sync | None = None


class _Sync:
    """Where the local tensor's data was (`_view`), its version, and the copy's use count,
    when both last held the same values. Holding the storage keeps its memory from being
    reused for another tensor, so `matches` cannot mistake a new tensor at a recycled address
    for the old one."""

    __slots__ = ("storage", "touches", "version", "view")

    def __init__(self, local: torch.Tensor, pointer: Pointer, view: tuple) -> None:
        self.storage = local.untyped_storage()
        self.view = view
        self.version = local._version
        self.touches = pointer._touches

    def matches(self, local: torch.Tensor, pointer: Pointer) -> bool:
        return (
            _view(local) == self.view
            and local._version == self.version
            and pointer._touches == self.touches
        )


def _view(tensor: torch.Tensor) -> tuple:
    """Which memory a tensor shows, and how: equal for two tensors that are the same view of
    the same memory (an address still held is the same storage and offset)."""
    return tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype


@dataclass
class _Remotes:
    """Per local parameter or buffer (by identity): its copies, one per worker, and the worker
    whose copy its module uses now (`sent_to`)."""

    copies: dict[int, dict[Client, _RemoteCopy]] = field(default_factory=dict)
    sent_to: dict[int, Client] = field(default_factory=dict)
    local_of: dict[int, torch.Tensor] = field(default_factory=dict)  # by id() of a copy's pointer

    def of(self, tensor: torch.Tensor) -> dict[Client, _RemoteCopy]:
        key = id(tensor)
        found = self.copies.get(key)
        if found is None:
            found = self.copies[key] = {}
            weakref.finalize(tensor, self._forget, key)
        return found

    def _forget(self, key: int) -> None:
        for copy in self.copies.pop(key, {}).values():
            self.local_of.pop(id(copy.pointer), None)
        self.sent_to.pop(key, None)


_REMOTES = _Remotes()


def _tables(modules: list[nn.Module]) -> list[tuple[nn.Module, dict]]:
    return [(m, table) for m in modules for table in (m._parameters, m._buffers)]


def module_location(module: nn.Module) -> Any:
    """The worker a sent module is on, or None when it is local."""
    client = module.__dict__.get("_tether_client")
    return client.worker if client is not None else None


def send_module(module: M, worker: Any) -> M:
    """`model.send(worker)`: the module's parameters and buffers become pointers, in place."""
    client = client_of(worker)
    current = module.__dict__.get("_tether_client")
    if current is client:
        return module
    if current is not None:
        get_module(module)
    modules = list(module.modules())
    for owner, table in _tables(modules):
        locals_ = owner.__dict__.setdefault("_tether_locals", {})
        for name, local in table.items():
            if local is None:
                continue
            copies = _REMOTES.of(local)
            copy = copies.get(client)
            if copy is None:
                copy = copies[client] = _RemoteCopy(send_tensor(local, worker))
                _REMOTES.local_of[id(copy.pointer)] = local
            elif copy.synced is None or not copy.synced.matches(local, copy.pointer):
                remote_call("tether.assign", [copy.pointer, local.detach()], {})
            locals_[id(table), name] = local
            table[name] = copy.pointer
            _REMOTES.sent_to[id(local)] = client
            _go_away(local)
    for m in modules:
        m.__dict__["_tether_client"] = client
    module.__dict__["_tether_modules"] = modules  # spares model.get() walking the tree again
    return module


def get_module(module: nn.Module) -> nn.Module:
    """`model.get()`: fetch the trained values into the module's own tensors (one round trip).
    The worker keeps its copy, so sending the module there again costs nothing."""
    client = module.__dict__.get("_tether_client")
    if client is None:
        return module
    modules = module.__dict__.pop("_tether_modules", None) or list(module.modules())
    slots = []
    for owner, table in _tables(modules):
        locals_ = owner.__dict__.get("_tether_locals", {})
        for name, value in table.items():
            if isinstance(value, Pointer):
                local = locals_.pop((id(table), name))
                _come_back(local)
                slots.append((table, name, local, value))
    values = client.get([pointer.id for *_, pointer in slots], delete=False, adopt=True)
    for (table, name, local, pointer), value in zip(slots, values, strict=True):
        fetched = _view(value)
        if _view(local) != fetched:  # lent memory the local tensor already holds stays
            local.data = value.detach()  # adopt the fetched (or lent) memory: no further copy
        table[name] = local
        _REMOTES.sent_to.pop(id(local), None)
        for other, copy in _REMOTES.of(local).items():  # the others now hold older values
            copy.synced = _Sync(local, pointer, fetched) if other is client else None
    for m in modules:
        m.__dict__.pop("_tether_client", None)
    return module


class _Away:
    """Mixed into the class of a sent module's local tensor while the module is away (PySyft's
    semantics for `params = list(model.parameters())` taken before `model.send()`): every torch
    operation on it, and every pointer attribute (`copy()`, `get()`, `location`...), goes to
    its copy on the worker, which the module uses. `model.get()` brings the values back into
    it and ends this. Only tensors a module swapped for pointers are ever of this class."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        if getattr(func, "__name__", "") in ("__get__", "__set__"):  # a tensor property
            name = func.__self__.__name__
            if func.__name__ == "__get__":
                return getattr(_copy_of(args[0]), name)
            return setattr(_copy_of(args[0]), name, _copies_of(args[1]))
        return Pointer.__torch_function__(func, types, _copies_of(args), _copies_of(kwargs or {}))

    def __getattr__(self, name: str) -> Any:  # what pointers have and tensors lack
        return getattr(_copy_of(self), name)

    def send(self, *args: Any, **kwargs: Any) -> Any:
        return _copy_of(self).send(*args, **kwargs)

    def move(self, *args: Any, **kwargs: Any) -> Any:
        return _copy_of(self).move(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(_copy_of(self))


_AWAY_CLASSES: dict[type, type] = {}


def _go_away(local: torch.Tensor) -> None:
    """The local tensor of a sent module stands for its copy on the worker from now on."""
    cls = type(local)
    away = _AWAY_CLASSES.get(cls)
    if away is None:
        away = _AWAY_CLASSES[cls] = type(f"Sent{cls.__name__}", (_Away, cls), {})
    local.__class__ = away


def _come_back(local: torch.Tensor) -> None:
    """The module is back: the tensor is its own again."""
    cls = type(local)
    if issubclass(cls, _Away):
        local.__class__ = cls.__bases__[1]


def _copy_of(local: Any) -> Pointer:
    """The pointer an away tensor stands for: its copy on the worker its module is on."""
    return _REMOTES.copies[id(local)][_REMOTES.sent_to[id(local)]].pointer


def _copies_of(value: Any) -> Any:
    """`value` with every away tensor in it (in lists, tuples and dicts too) replaced by the
    pointer it stands for."""
    if isinstance(value, _Away):
        return _copy_of(value)
    if isinstance(value, list | tuple):
        return type(value)(_copies_of(v) for v in value)
    if isinstance(value, dict):
        return {k: _copies_of(v) for k, v in value.items()}
    return value


def copy_module(module: M) -> M:
    """`model.copy()` (PySyft): an independent deep copy of a local module."""
    if module.__dict__.get("_tether_client") is not None:
        raise errors.NotAllowedError(
            f"this {type(module).__name__} is on {module_location(module).id!r}: copy it "
            "before sending (model.copy().send(worker)), or .get() it first"
        )
    return deepcopy(module)


# ---- optimizers -----------------------------------------------------------------------------


def _local_params(params: Any) -> Any:
    """An optimizer's params with each pointer of a sent module swapped for the local parameter
    it stands for, so an optimizer made after `model.send()` steps like one made before."""
    params = list(params)
    if not any(
        isinstance(p, Pointer) or (isinstance(p, dict) and _has_pointer(p.get("params")))
        for p in params
    ):
        return params
    return [
        {**p, "params": [_local(q) for q in _listed(p["params"])]}
        if isinstance(p, dict)
        else _local(p)
        for p in params
    ]


def _listed(params: Any) -> list:
    return [params] if isinstance(params, torch.Tensor | Pointer) else list(params)


def _has_pointer(params: Any) -> bool:
    return params is not None and any(isinstance(p, Pointer) for p in _listed(params))


def _local(param: Any) -> Any:
    if not isinstance(param, Pointer):
        return param
    local = _REMOTES.local_of.get(id(param))
    if local is None:
        raise errors.NotAllowedError(
            "an optimizer steps local tensors or the parameters of a sent module "
            "(torch.optim.SGD(model.parameters()) before or after model.send(worker)); this "
            f"pointer names a tensor made on {param.client.name!r}: step it there by hand "
            "(with torch.no_grad(): w -= lr * w.grad)"
        )
    return local


# Parameters torch cannot hold (SMPC's shared tensors), each with what sets an optimizer up
# for them instead of torch: registered from above (`optimize_other_parameters`).
_OTHER_PARAMETERS: list[tuple[type, Callable[[torch.optim.Optimizer, list, dict], None]]] = []


def optimize_other_parameters(
    kind: type, init: Callable[[torch.optim.Optimizer, list, dict], None]
) -> None:
    """Let `torch.optim.X(params, ...)` take parameters of `kind`, which are not tensors:
    `init(optimizer, params, defaults)` sets the optimizer up in place of torch."""
    if all(known is not kind for known, _ in _OTHER_PARAMETERS):
        _OTHER_PARAMETERS.append((kind, init))


def _wrap_optimizer_init() -> None:
    original: Any = torch.optim.Optimizer.__init__
    if getattr(original, "_tether", False):
        return

    @functools.wraps(original)
    def __init__(self: torch.optim.Optimizer, params: Any, defaults: dict) -> None:
        if _OTHER_PARAMETERS and not isinstance(params, torch.Tensor):
            params = list(params)
            for kind, init in _OTHER_PARAMETERS:
                if params and all(isinstance(p, kind) for p in params):
                    return init(self, params, defaults)
        with torch._C.DisableTorchFunctionSubclass():  # it checks the local tensors themselves
            original(self, _local_params(params), defaults)

    __init__._tether = True  # type: ignore[attr-defined]
    setattr(torch.optim.Optimizer, "__init__", __init__)  # noqa: B010  (as for step)


@dataclass
class _Mirror:
    """An optimizer's twin on one worker, for these parameters (the ids of their copies there)
    and hyperparameters (as plain values)."""

    pointer: Pointer
    param_ids: list[int]
    hyperparameters: list[dict]


_MIRRORS: dict[int, dict[Client, _Mirror]] = {}


def _where(optimizer: torch.optim.Optimizer) -> Client | None:
    """The worker all of the optimizer's parameters are on; None when they are all here."""
    places = {_REMOTES.sent_to.get(id(p)) for g in optimizer.param_groups for p in g["params"]}
    if len(places) > 1:
        names = sorted("here" if c is None else repr(c.name) for c in places)
        raise errors.WorkerMismatchError(
            f"{type(optimizer).__name__} holds parameters on {', '.join(names)}: "
            "one optimizer steps parameters on one worker (tether.federated.Optims keeps one "
            "per worker)"
        )
    return places.pop() if places else None


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _mirror(optimizer: torch.optim.Optimizer, client: Client) -> _Mirror:
    """The optimizer's mirror on `client`'s worker, made on first use (and again when its
    parameters change), with any changed hyperparameters (an lr schedule, say) sent first."""
    groups = optimizer.param_groups
    copies = _REMOTES.copies
    param_ids = [copies[id(p)][client].pointer.id for g in groups for p in g["params"]]
    mirrors = _MIRRORS.get(id(optimizer))
    mirror = mirrors.get(client) if mirrors is not None else None
    if mirror is None or mirror.param_ids != param_ids:
        return _new_mirror(optimizer, client, param_ids, _hyperparameters(groups))
    if not _unchanged(groups, mirror.hyperparameters):
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        client.call("tether.optim.set_hyperparameters", [Ref(mirror.pointer.id), hyper], kind=None)
        mirror.hyperparameters = _hyperparameters(groups)
    return mirror


def _hyperparameters(groups: list[dict]) -> list[dict]:
    return [{k: _plain(v) for k, v in g.items() if k != "params"} for g in groups]


def _unchanged(groups: list[dict], seen: list[dict]) -> bool:
    """Whether the groups' hyperparameters are still `seen` (checked by identity first: this
    runs at every step)."""
    if len(groups) != len(seen):
        return False
    for group, plain in zip(groups, seen, strict=True):
        if group.keys() - {"params"} != plain.keys():
            return False
        for key, value in plain.items():
            now = group[key]
            if now is not value and _plain(now) != value:
                return False
    return True


def _new_mirror(
    optimizer: torch.optim.Optimizer, client: Client, param_ids: list[int], plain: list[dict]
) -> _Mirror:
    path = f"torch.optim.{type(optimizer).__name__}"
    if getattr(torch.optim, type(optimizer).__name__, None) is not type(optimizer) or (
        path not in ALLOWLIST
    ):
        raise errors.NotAllowedError(
            f"{type(optimizer).__qualname__} cannot step remote parameters: tether mirrors only "
            "the optimizers of torch.optim listed in its allowlist"
        )
    ids = iter(param_ids)
    spec = [
        {
            "params": [Ref(next(ids)) for _ in g["params"]],
            **{k: v for k, v in g.items() if k != "params"},
        }
        for g in optimizer.param_groups
    ]
    mirrors = _MIRRORS.get(id(optimizer))
    if mirrors is None:
        mirrors = _MIRRORS[id(optimizer)] = {}
        weakref.finalize(optimizer, _MIRRORS.pop, id(optimizer), None)
    pointer = client.call(path, [spec], kind="optimizer")
    mirror = mirrors[client] = _Mirror(pointer, param_ids, plain)
    return mirror


def _wrap_step(cls: type[torch.optim.Optimizer]) -> None:
    """Route `step()` to the worker when the parameters are there. The wrapper goes outside
    torch's profiling wrapper (installed here as torch would on first use), so a remote step
    costs no local profiler record; step hooks run only where the step runs locally."""
    original: Any = cls.step
    if getattr(original, "_tether", False):
        return
    if not getattr(original, "hooked", False):
        original = torch.optim.Optimizer.profile_hook_step(original)

    @functools.wraps(original)
    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        client = _where(self)
        if client is None:
            return original(self, closure) if closure is not None else original(self)
        if closure is not None:
            raise errors.NotAllowedError("a closure cannot run on a worker; call step() without")
        client.call(
            "torch.optim.Optimizer.step", [_mirror(self, client).pointer.id], kind=None, refs=1
        )
        return None

    step._tether = True  # type: ignore[attr-defined]
    step.hooked = True  # type: ignore[attr-defined]  # torch must not wrap it again
    setattr(cls, "step", step)  # noqa: B010  (torch's stubs forbid assigning a method)


def _wrap_zero_grad() -> None:
    original: Any = torch.optim.Optimizer.zero_grad
    if getattr(original, "_tether", False):
        return

    @functools.wraps(original)
    def zero_grad(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        client = _where(self)
        if client is None:
            return original(self, set_to_none)
        client.call(
            "torch.optim.Optimizer.zero_grad",
            [_mirror(self, client).pointer.id],
            {"set_to_none": set_to_none},
            kind=None,
            refs=1,
        )
        return None

    zero_grad._tether = True  # type: ignore[attr-defined]
    setattr(torch.optim.Optimizer, "zero_grad", zero_grad)  # noqa: B010  (as above)


# ---- installing -----------------------------------------------------------------------------


class _Location:
    """`module.location`, unless the module has its own attribute of that name."""

    def __get__(self, module: nn.Module | None, owner: type) -> Any:
        if module is None:
            return self
        for table in (module._parameters, module._buffers, module._modules):
            if "location" in table:
                return table["location"]
        return module_location(module)


def install() -> None:
    """Teach torch the tether methods. Idempotent; draws nothing from torch's RNG."""
    for cls, name, method in (
        (torch.Tensor, "send", send_tensor),
        (torch.Tensor, "move", send_tensor),
        (nn.Module, "send", send_module),
        (nn.Module, "get", get_module),
        (nn.Module, "move", send_module),
        (nn.Module, "location", _Location()),
        (nn.Module, "copy", copy_module),
    ):
        setattr(cls, name, method)
    _wrap_optimizer_init()
    for path in ALLOWLIST:
        module, _, name = path.rpartition(".")
        if module == "torch.optim" and name[:1].isupper():
            _wrap_step(getattr(torch.optim, name))
    _wrap_zero_grad()


class TorchHook:
    """`hook = sy.TorchHook(torch)`, as in the tutorials. tether hooks torch on import; this
    object is kept so tutorial code runs unchanged, and is accepted by `VirtualWorker`."""

    def __init__(self, torch_module: Any = torch) -> None:
        install()
        self.torch = torch_module
