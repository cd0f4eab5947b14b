"""Models as plain data: `describe(module)` on the coordinator, `build(spec)` on a worker.

A worker must train a model it is sent without running code it was sent. So a model travels as
three kinds of plain data: the layers it calls (an allowlisted `torch.nn` class and constructor
arguments read back from the instance), its forward pass as a `torch.fx` graph whose nodes name
allowlisted functions, and its weights as tensors. `build` resolves every layer class and every
function through tether's allowlist (`tether.ops`), sizes each layer on the meta
device before allocating it, and runs the graph with a small interpreter: no pickle, no eval,
no generated source, no TorchScript.

Long because `describe` and `build` are the two halves of one format, and a reader checking
what a worker will build from a peer's bytes should find both in one file.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import nn

from tether.errors import LimitError, NotAllowedError
from tether.node import Limits
from tether.ops import ALLOWLIST, PATH_OF

Spec = dict[str, Any]

SPEC_VERSION = 1
MAX_NODES = 10_000
MAX_LAYERS = 1_000
MAX_DEPTH = 8  # nesting of an argument (tuples in tuples, ...)
MAX_NAME = 200

# Forward passes may call tensor functions, never modules, optimizers or autograd entry points.
_FUNCTION_PREFIXES = ("torch.nn.functional.", "operator.", "builtins.")
_METHOD_PREFIX = "torch.Tensor."
_CONTAINERS = ("torch.nn.Sequential", "torch.nn.ModuleList", "torch.nn.ModuleDict")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")  # a part of a dotted name (Sequential's "0")
_OPS = ("placeholder", "get_attr", "call_module", "call_function", "call_method", "output")
_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.memory_format)


# ---- describe (the coordinator's side) ----------------------------------------------------------


def describe(module: nn.Module) -> Spec:
    """The model as plain data: `{"version", "layers", "attributes", "graph", "state"}`.

    Raises NotAllowedError if the module calls a layer or function outside the allowlist (the
    worker would refuse it), ValueError if a layer's arguments cannot be read back."""
    graph = torch.fx.symbolic_trace(module).graph
    modules = dict(module.named_modules())
    layers: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    state: dict[str, torch.Tensor] = {}
    nodes = []
    for node in graph.nodes:
        op, target, args = node.op, node.target, node.args
        if op == "call_module":
            layer = modules[target]
            layers[target] = {"type": _class_path(layer), "args": _layer_args(layer)}
            state.update(
                {f"{target}.{k}": v.detach().clone() for k, v in layer.state_dict().items()}
            )
        elif op == "get_attr":
            value = _attribute(module, target)
            attributes[target] = "parameter" if isinstance(value, nn.Parameter) else "buffer"
            state[target] = value.detach().clone()
        elif op == "call_function" and target is getattr:  # x.shape and friends
            op, target, args = "call_method", _path(f"{_METHOD_PREFIX}{args[1]}"), args[:1]
        elif op == "call_function":
            target = _path_of(target)
        elif op == "call_method":
            target = _path(f"{_METHOD_PREFIX}{target}")
        nodes.append(
            {
                "op": op,
                "name": node.name,
                "target": target,
                "args": _encode(tuple(args)),
                "kwargs": {k: _encode(v) for k, v in node.kwargs.items()},
            }
        )
    return {
        "version": SPEC_VERSION,
        "layers": layers,
        "attributes": attributes,
        "graph": nodes,
        "state": state,
    }


def structure(spec: Spec) -> Spec:
    """The spec without its weights (what stays the same from round to round)."""
    return {k: v for k, v in spec.items() if k != "state"}


def with_state(spec: Spec, state: dict[str, torch.Tensor]) -> Spec:
    """The same model with other weights."""
    return {**structure(spec), "state": state}


def _path(path: str) -> str:
    if path not in ALLOWLIST:
        raise NotAllowedError(
            f"{path} is not in tether's allowlist, so no worker would run this "
            "model (add it to tether/ops/table.py, with a test, if safe)"
        )
    return path


def _path_of(fn: Any) -> str:
    path = PATH_OF.get(id(fn))
    if path is None:
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        raise NotAllowedError(
            f"the forward pass calls {name}, which is not in tether's "
            "allowlist (tether/ops/table.py)"
        )
    return path


def _class_path(layer: nn.Module) -> str:
    cls = type(layer)
    return _path(f"{cls.__module__.split('.modules')[0]}.{cls.__name__}")


def _attribute(module: nn.Module, target: str) -> torch.Tensor:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"the forward pass reads {target!r}, a {type(value).__name__}; only "
            "tensors (parameters, buffers) can travel"
        )
    return value


def _layer_args(layer: nn.Module) -> dict[str, Any]:
    """Constructor arguments read back from the instance: each `__init__` parameter that has a
    same-named attribute (`bias` is whether the layer has one), and `dtype` when the weights
    are not of the default one."""
    found: dict[str, Any] = {}
    for name, param in inspect.signature(type(layer).__init__).parameters.items():
        if (
            name in ("self", "device", "dtype")
            or name.startswith("_")
            or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ):
            continue
        if not hasattr(layer, name):
            if param.default is param.empty:
                raise ValueError(
                    f"cannot describe {type(layer).__name__}: its argument {name!r} "
                    "is not kept as an attribute"
                )
            continue
        value = getattr(layer, name)
        if isinstance(value, torch.Tensor) or (value is None and name == "bias"):
            value = value is not None
        if not _is_plain(value):
            raise ValueError(
                f"cannot describe {type(layer).__name__}: argument {name!r} is a "
                f"{type(value).__name__}, not plain data"
            )
        found[name] = value
    dtypes = {t.dtype for t in layer.parameters(recurse=False)}
    if (
        "dtype" in inspect.signature(type(layer).__init__).parameters
        and dtypes
        and dtypes != {torch.get_default_dtype()}
    ):
        (found["dtype"],) = dtypes
    return found


def _is_plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, tuple | list):
        return depth < 2 and all(_is_plain(v, depth + 1) for v in value)
    return isinstance(value, _PLAIN)


def _encode(value: Any) -> Any:
    """fx arguments as plain data: a node becomes `{"node": name}`, a dict `{"dict": {...}}`."""
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return slice(_encode(value.start), _encode(value.stop), _encode(value.step))
    if isinstance(value, _PLAIN) or value is Ellipsis:
        return value
    raise ValueError(
        f"the forward pass uses a {type(value).__name__} constant; only plain data can travel"
    )


# ---- build (the worker's side) ----------------------------------------------------------------


def build(spec: Any, max_elements: int | None = None) -> nn.Module:
    """The module a spec describes, checked against the allowlist and `max_elements` (the
    node's per-result limit, by default `Limits().max_elements`) before anything is allocated.
    Raises NotAllowedError, LimitError or ValueError naming what was wrong."""
    limit = Limits().max_elements if max_elements is None else max_elements
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise ValueError(
            f"not a model spec of version {SPEC_VERSION} (make one with "
            "tether.federated.delegated.modelspec.describe(model))"
        )
    unknown = set(spec) - {"version", "layers", "attributes", "graph", "state"}
    if unknown:
        raise ValueError(f"unknown model spec fields {sorted(unknown)}")
    layers = _mapping(spec.get("layers", {}), "layers", MAX_LAYERS)
    attributes = _mapping(spec.get("attributes", {}), "attributes", MAX_LAYERS)
    state = _mapping(spec.get("state", {}), "state", MAX_NODES)
    model = SpecModule(_steps(spec.get("graph"), layers, attributes, limit), attributes)
    shapes = {name: _meta_layer(name, layer, limit) for name, layer in layers.items()}
    for name, kind in attributes.items():
        if kind not in ("parameter", "buffer") or not isinstance(state.get(name), torch.Tensor):
            raise ValueError(
                f"attribute {name!r} needs a kind (parameter or buffer) and a "
                "tensor in the spec's state"
            )
    total = sum(
        t.numel() for made in shapes.values() for t in (*made.parameters(), *made.buffers())
    )
    total += sum(state[name].numel() for name in attributes)
    if total > limit:
        raise LimitError(f"the model has {total:,} elements; this node allows {limit:,}")
    for name, made in shapes.items():
        _place(model, name, _materialize(made, layers[name]["args"]))
    for name, kind in attributes.items():
        tensor = state[name].detach().clone()
        _place(model, name, nn.Parameter(tensor) if kind == "parameter" else tensor, kind)
    _load(model, state)
    return model


def _mapping(value: Any, field: str, most: int) -> dict:
    if not isinstance(value, dict) or len(value) > most:
        raise ValueError(f"model spec field {field!r} must be a mapping of at most {most} entries")
    for name in value:
        _check_name(name, field)
    return value


def _check_name(name: Any, what: str) -> None:
    if not (
        isinstance(name, str)
        and len(name) <= MAX_NAME
        and all(_PART.fullmatch(p) and "__" not in p for p in name.split("."))
    ):
        raise NotAllowedError(
            f"{name!r} is not a valid name in {what} (dotted identifiers, no dunders)"
        )


def _meta_layer(name: str, layer: Any, limit: int) -> nn.Module:
    """One layer, its class resolved through the allowlist, built on the meta device: its
    size is known and checked before anything is allocated."""
    if (
        not isinstance(layer, dict)
        or set(layer) != {"type", "args"}
        or not isinstance(layer["args"], dict)
    ):
        raise ValueError(f"layer {name!r} must be {{'type': 'torch.nn.X', 'args': {{...}}}}")
    path, args = layer["type"], layer["args"]
    cls = _layer_class(path)
    params = inspect.signature(cls.__init__).parameters
    for arg, value in args.items():
        if (
            not isinstance(arg, str)
            or arg not in params
            or arg.startswith("_")
            or arg in ("self", "device")
        ):
            raise ValueError(f"layer {name!r}: {path} takes no argument {arg!r}")
        if not _is_plain(value) or isinstance(value, torch.device):
            raise ValueError(
                f"layer {name!r}: argument {arg!r} of {path} must be plain data "
                f"(numbers, strings, tuples), got {type(value).__name__}"
            )
    try:
        with torch.device("meta"):
            made = cls(**args)
    except Exception as exc:
        raise ValueError(f"layer {name!r}: {path}({_show(args)}) failed: {exc}") from None
    for key, tensor in (*made.named_parameters(), *made.named_buffers()):
        if tensor.numel() > limit:
            raise LimitError(
                f"layer {name!r}: {path}'s {key} would have {tensor.numel():,} "
                f"elements; this node allows {limit:,}"
            )
    return made


def _materialize(made: nn.Module, args: dict) -> nn.Module:
    """A meta layer's memory, left for the spec's weights to fill (a strict load follows, so
    nothing stays uninitialized); a layer with buffers the weights do not carry is built."""
    if any(m._non_persistent_buffers_set for m in made.modules()):
        with torch.random.fork_rng(devices=[]):
            return type(made)(**args)
    return made.to_empty(device="cpu")


def _layer_class(path: Any) -> type[nn.Module]:
    entry = ALLOWLIST.get(path) if isinstance(path, str) else None
    fn = entry.fn if entry is not None else None
    if not (isinstance(fn, type) and issubclass(fn, nn.Module)) or path in _CONTAINERS:
        raise NotAllowedError(
            f"layer type {path!r} is refused: a layer must be one of the "
            "torch.nn layers in tether's allowlist"
        )
    return fn


def _show(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())[:300]


def _place(model: nn.Module, name: str, value: Any, kind: str = "module") -> None:
    """Put a layer, parameter or buffer at a dotted name, making empty parents as needed."""
    *parents, leaf = name.split(".")
    owner = model
    try:
        for part in parents:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        if kind == "buffer":
            owner.register_buffer(leaf, value)
        elif kind == "parameter":
            owner.register_parameter(leaf, value)
        else:
            owner.add_module(leaf, value)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"cannot place {name!r} in the model: {exc}") from None


def _load(model: nn.Module, state: dict) -> None:
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"weight {key!r} is a {type(value).__name__}, not a tensor")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights do not fit the layers: {exc}") from None


# ---- the forward pass -----------------------------------------------------------------------


class _Ref:
    """A reference to an earlier node's value inside a step's arguments."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Step:
    """One graph node, resolved: `fn` is the allowlisted callable (guarded) for calls."""

    __slots__ = ("args", "fn", "kwargs", "name", "op", "target")

    def __init__(
        self, op: str, name: str, target: str, fn: Callable | None, args: tuple, kwargs: dict
    ) -> None:
        self.op, self.name, self.target, self.fn = op, name, target, fn
        self.args, self.kwargs = args, kwargs


def _steps(graph: Any, layers: dict, attributes: dict, limit: int) -> list[_Step]:
    if not isinstance(graph, list) or not 0 < len(graph) <= MAX_NODES:
        raise ValueError(f"model spec field 'graph' must be a list of 1 to {MAX_NODES} nodes")
    seen: set[str] = set()
    steps = []
    for node in graph:
        if not isinstance(node, dict) or set(node) != {"op", "name", "target", "args", "kwargs"}:
            raise ValueError("each graph node must have exactly op, name, target, args, kwargs")
        op, name, target = node["op"], node["name"], node["target"]
        if op not in _OPS:
            raise NotAllowedError(f"graph node op {op!r} is refused; ops are {', '.join(_OPS)}")
        _check_name(name, "the graph")
        if name in seen:
            raise ValueError(f"graph node {name!r} appears twice")
        if not isinstance(node["args"], tuple | list) or not isinstance(node["kwargs"], dict):
            raise ValueError(f"graph node {name!r}: args must be a sequence, kwargs a mapping")
        args = tuple(_decode(a, seen, 0) for a in node["args"])
        kwargs = _decode_kwargs(node["kwargs"], seen, 0)
        _check_target(op, name, target, layers, attributes)
        fn = (
            _guarded(_entry(op, name, target), name, limit)
            if op in ("call_function", "call_method")
            else None
        )
        steps.append(_Step(op, name, target, fn, args, kwargs))
        seen.add(name)
    if steps[-1].op != "output" or sum(s.op == "output" for s in steps) != 1:
        raise ValueError("the graph must end with its one output node")
    return steps


def _check_target(op: str, name: str, target: Any, layers: dict, attributes: dict) -> None:
    if op == "call_module" and target not in layers:
        raise ValueError(f"graph node {name!r} calls layer {target!r}, which the spec lacks")
    if op == "get_attr" and target not in attributes:
        raise ValueError(f"graph node {name!r} reads {target!r}, which the spec lacks")
    if op == "placeholder":
        _check_name(target, "the graph's inputs")


def _entry(op: str, name: str, target: Any) -> Any:
    """The allowlist entry of a call: a Tensor method, or a tensor function."""
    if op == "call_method":
        allowed = isinstance(target, str) and target.startswith(_METHOD_PREFIX)
    else:
        allowed = _forward_function(target)
    entry = ALLOWLIST.get(target) if allowed else None
    if entry is None:
        raise NotAllowedError(
            f"graph node {name!r}: {op} target {target!r} is refused: not a "
            "tensor function in tether's allowlist"
        )
    return entry


def _forward_function(target: Any) -> bool:
    """torch.X (one level), torch.nn.functional.X, operator.X and builtins.X: tensor maths,
    never a module, optimizer, autograd or tether op."""
    if not isinstance(target, str):
        return False
    if target.startswith(_FUNCTION_PREFIXES):
        return True
    return target.startswith("torch.") and target.count(".") == 1


def _guarded(entry: Any, name: str, limit: int) -> Callable:
    """The entry's function, refusing calls whose allowlist guard predicts more than `limit`
    elements, and results larger than it (as the node does for remote calls)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if entry.self_type is not None and not (args and isinstance(args[0], entry.self_type)):
            raise TypeError(f"{entry.path} needs a {entry.self_type.__name__} first")
        if entry.guard is not None and entry.guard(args, kwargs) > limit:
            raise LimitError(
                f"graph node {name!r}: {entry.path} would allocate more than {limit:,} elements"
            )
        result = entry.fn(*args, **kwargs)
        for t in result if isinstance(result, list | tuple) else (result,):
            if isinstance(t, torch.Tensor) and t.numel() > limit:
                raise LimitError(
                    f"graph node {name!r}: {entry.path} made {t.numel():,} "
                    f"elements; this node allows {limit:,}"
                )
        return result

    return call


def _decode(value: Any, seen: set[str], depth: int) -> Any:
    """Plain data back to arguments; `{"node": name}` becomes a reference to an earlier node."""
    if depth > MAX_DEPTH:
        raise ValueError(f"an argument is nested more than {MAX_DEPTH} deep")
    if isinstance(value, dict):
        if set(value) == {"node"}:
            ref = value["node"]
            if ref not in seen:
                raise ValueError(f"argument refers to node {ref!r} before it is computed")
            return _Ref(ref)
        if set(value) == {"dict"} and isinstance(value["dict"], dict):
            return _decode_kwargs(value["dict"], seen, depth + 1)
        raise ValueError("a mapping argument must be {'node': name} or {'dict': {...}}")
    if isinstance(value, tuple | list):
        items = [_decode(v, seen, depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, slice):
        return slice(*(_decode(v, seen, depth + 1) for v in (value.start, value.stop, value.step)))
    if isinstance(value, _PLAIN) or value is Ellipsis:
        return value
    raise ValueError(f"a graph argument cannot be a {type(value).__name__}")


def _decode_kwargs(value: dict, seen: set[str], depth: int) -> dict:
    for key in value:
        if not isinstance(key, str) or "__" in key or not _NAME.fullmatch(key):
            raise NotAllowedError(f"keyword {key!r} is refused (identifiers, no dunders)")
    return {k: _decode(v, seen, depth + 1) for k, v in value.items()}


def _fill(value: Any, env: dict[str, Any]) -> Any:
    if isinstance(value, _Ref):
        return env[value.name]
    if isinstance(value, tuple):
        return tuple(_fill(v, env) for v in value)
    if isinstance(value, list):
        return [_fill(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, env) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_fill(value.start, env), _fill(value.stop, env), _fill(value.step, env))
    return value


class SpecModule(nn.Module):
    """A module rebuilt from a spec: its layers are real `torch.nn` layers, its forward walks
    the graph's steps, calling only what the allowlist resolved."""

    def __init__(self, steps: list[_Step], attributes: dict[str, str]) -> None:
        super().__init__()
        self._steps = steps
        self._inputs = [s for s in steps if s.op == "placeholder"]
        self._parameters_read = {k for k, kind in attributes.items() if kind == "parameter"}

    def chain(self) -> list[nn.Module] | None:
        """The layers in call order if the forward is a plain chain (one input; each step one
        layer applied to the step before; no functions, attributes or reuse), else None. DP-SGD
        takes its fast path only where it can see that no step mixes a batch's samples."""
        body = self._steps[1:-1]
        if len(self._inputs) != 1 or self._steps[-1].op != "output" or not body:
            return None
        previous, layers = self._steps[0].name, []
        for step in [*body, self._steps[-1]]:
            arg = step.args[0] if len(step.args) == 1 else None
            if step.kwargs or not (isinstance(arg, _Ref) and arg.name == previous):
                return None
            if step.op == "call_module":
                layers.append(self.get_submodule(step.target))
            elif step.op != "output":
                return None
            previous = step.name
        return layers if len({id(m) for m in layers}) == len(layers) else None

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) > len(self._inputs):
            raise TypeError(f"the model takes {len(self._inputs)} inputs, got {len(inputs)}")
        env: dict[str, Any] = {}
        given = iter(inputs)
        for step in self._steps:
            if step.op == "placeholder":
                env[step.name] = next(given, step.args[0] if step.args else None)
            elif step.op == "get_attr":
                env[step.name] = (
                    self.get_parameter(step.target)
                    if (step.target in self._parameters_read)
                    else self.get_buffer(step.target)
                )
            elif step.op == "call_module":
                env[step.name] = self.get_submodule(step.target)(
                    *_fill(step.args, env), **_fill(step.kwargs, env)
                )
            elif step.op == "output":
                return _fill(step.args[0], env)
            else:
                assert step.fn is not None
                env[step.name] = step.fn(*_fill(step.args, env), **_fill(step.kwargs, env))
        raise AssertionError("unreachable: the graph ends with its output")
