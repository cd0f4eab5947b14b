"""A hostile peer against a real Node: every frame here is one a network peer could send.

Each attempt must be refused with a Failure that names what was refused, run nothing
dangerous, touch no file, and leave the node serving the next command normally.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import importlib
import marshal
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
import torch
import torch.hub
import torch.jit
from conftest import leaked, private_values

import tether
from tether.errors import LimitError, NotAllowedError
from tether.node import Limits, Node
from tether.node.quick import runs_on_loop
from tether.ops import ALLOWLIST
from tether.wire import Call, Delete, Done, Failure, Get, Put, Ref, Value, decode, encode

CLIENT = "mallory"
LIMIT = 10_000  # elements per result on the test node
N = 200  # N * N > LIMIT
X, LIN, PARAMS, OPT, LST, COL, ROW, VEC, SCORER, SECRET = range(1, 11)
OUT, CHECK = 50, 51
ORIGINAL = torch.tensor([1.0, 2.0, 3.0])


def send(node: Node, *commands: object) -> list:
    return decode(node.run(encode(list(commands)), CLIENT).parts().join())


@pytest.fixture
def node() -> Node:
    """A node holding, for the attacker, a tensor, layers, an optimizer, a list and a
    column, a row and a vector whose outer product exceeds the node's limit."""
    node = Node("owner", limits=Limits(max_elements=LIMIT, max_stored_bytes=2**26))
    replies = send(
        node,
        Put(X, ORIGINAL.clone()),
        Call("torch.nn.Linear", [2, 3], {}, LIN),
        Call("torch.nn.Module.parameters", [Ref(LIN)], {}, PARAMS),
        Call("torch.optim.SGD", [Ref(PARAMS)], {"lr": 0.1}, OPT),
        Put(LST, [1, 2, 3]),
        Put(COL, torch.ones(N, 1)),
        Put(ROW, torch.ones(1, N)),
        Put(VEC, torch.ones(N)),
        Call("torch.nn.Linear", [2, 1], {}, SCORER),
    )
    assert all(isinstance(r, Done) for r in replies), replies
    return node


def assert_serves(node: Node) -> None:
    """The node answers a normal command correctly, and the attacker's data is intact."""
    done, value, original = send(
        node, Call("torch.sub", [Ref(X), -1], {}, CHECK), Get([CHECK]), Get([X])
    )
    assert isinstance(done, Done), done
    assert torch.equal(value.value[0], ORIGINAL + 1)
    assert torch.equal(original.value[0], ORIGINAL)


def only_failure(replies: list) -> Failure:
    (reply,) = replies
    assert isinstance(reply, Failure), reply
    return reply


# ---- nothing dangerous runs -----------------------------------------------------------------

_DANGEROUS_C = {
    id(f)
    for f in (
        builtins.eval,
        builtins.exec,
        builtins.compile,
        builtins.open,
        builtins.__import__,
        os.system,
        os.remove,
        pickle.loads,
        marshal.loads,
        torch.from_file,
        numpy.fromfile,
        numpy.save,
    )
}
_DANGEROUS_PY = {
    f.__code__
    for f in (
        torch.load,
        torch.save,
        numpy.load,
        importlib.import_module,
        subprocess.Popen.__init__,
        os.popen,
        torch.hub.load,
        torch.jit.load,
        shutil.rmtree,
    )
}


@contextlib.contextmanager
def watch() -> Iterator[list[str]]:
    """Records every call of a file, code or process primitive made while the node works."""
    ran: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and id(arg) in _DANGEROUS_C:
            ran.append(arg.__name__)
        elif event == "call" and frame.f_code in _DANGEROUS_PY:
            ran.append(frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        yield ran
    finally:
        sys.setprofile(None)


# ---- names outside the allowlist ------------------------------------------------------------

ESCAPES: list[tuple[str, list, dict]] = [
    # dunder chains
    ("torch.Tensor.__class__", [Ref(X)], {}),
    ("torch.Tensor.__class__.__mro__", [Ref(X)], {}),
    ("torch.Tensor.__subclasses__", [], {}),
    ("torch.Tensor.__reduce_ex__", [Ref(X), 2], {}),
    ("torch.Tensor.__setstate__", [Ref(X), []], {}),
    ("torch.Tensor.grad.__class__.__mro__", [Ref(X)], {}),
    ("torch.nn.Linear.__init__.__globals__", [], {}),
    ("torch.nn.Linear.__init__.__globals__.__builtins__", [], {}),
    ("torch.nn.Module.__call__", [Ref(LIN), Ref(X)], {}),
    ("torch.nn.Module.__dict__", [Ref(LIN)], {}),
    ("torch.optim.Optimizer.__init__", [Ref(OPT), []], {}),
    ("torch.add.__self__", [], {}),
    ("torch.__builtins__", [], {}),
    ("builtins.__import__", ["os"], {}),
    ("operator.__getitem__", [Ref(LST), 0], {}),
    ("torch.add.__call__", [Ref(X), 1], {}),
    # builtins that reach attributes, code, files or globals
    ("builtins.getattr", [Ref(X), "__class__"], {}),
    ("builtins.setattr", [Ref(LIN), "forward", 1], {}),
    ("builtins.delattr", [Ref(LIN), "weight"], {}),
    ("builtins.eval", ["__import__('os').system('touch TARGET')"], {}),
    ("builtins.exec", ["open('TARGET', 'w')"], {}),
    ("builtins.compile", ["1", "f", "eval"], {}),
    ("builtins.open", ["SECRET"], {}),
    ("builtins.globals", [], {}),
    ("builtins.vars", [Ref(LIN)], {}),
    ("builtins.type", [Ref(X)], {}),
    ("builtins.object", [], {}),
    ("builtins.breakpoint", [], {}),
    ("operator.attrgetter", ["__class__"], {}),
    ("operator.methodcaller", ["__reduce__"], {}),
    ("operator.call", [Ref(LIN), Ref(X)], {}),
    # torch: files, code, raw memory, hooks, global state
    ("torch.load", ["SECRET"], {"weights_only": False}),
    ("torch.save", [Ref(X), "TARGET"], {}),
    ("torch.from_file", ["SECRET", False, 3], {}),
    ("torch.hub.load", ["pytorch/vision", "resnet18"], {}),
    ("torch.jit.load", ["SECRET"], {}),
    ("torch.ops.aten.add", [Ref(X), Ref(X)], {}),
    ("torch._C._nn.linear", [Ref(X), Ref(X)], {}),
    ("torch.utils.data.DataLoader", [Ref(X)], {}),
    ("torch.utils.cpp_extension.load_inline", ["m", "int f() { return 0; }"], {}),
    ("torch.ops.load_library", ["SECRET"], {}),
    ("torch.Tensor.untyped_storage", [Ref(X)], {}),
    ("torch.Tensor.storage", [Ref(X)], {}),
    ("torch.Tensor.numpy", [Ref(X)], {}),
    ("torch.Tensor.data_ptr", [Ref(X)], {}),
    ("torch.Tensor.apply_", [Ref(X), Ref(LIN)], {}),
    ("torch.Tensor.map_", [Ref(X), Ref(X), Ref(LIN)], {}),
    ("torch.Tensor.register_hook", [Ref(X), Ref(LIN)], {}),
    ("torch.Tensor.set_", [Ref(X)], {}),
    ("torch.Tensor.as_strided", [Ref(X), [10**6], [0]], {}),
    ("torch.Tensor.resize_", [Ref(X), 10**6], {}),
    ("torch.Tensor.share_memory_", [Ref(X)], {}),
    ("torch.nn.Module.register_forward_hook", [Ref(LIN), Ref(LIN)], {}),
    ("torch.nn.Module.apply", [Ref(LIN), Ref(LIN)], {}),
    ("torch.nn.Module._apply", [Ref(LIN), Ref(LIN)], {}),
    ("torch.optim.Optimizer.register_step_pre_hook", [Ref(OPT), Ref(LIN)], {}),
    ("torch.set_num_threads", [1], {}),
    ("torch.set_default_device", ["meta"], {}),
    # numpy and the standard library
    ("numpy.load", ["SECRET"], {"allow_pickle": True}),
    ("numpy.fromfile", ["SECRET"], {}),
    ("os.system", ["touch TARGET"], {}),
    ("os.popen", ["touch TARGET"], {}),
    ("os.environ", [], {}),
    ("subprocess.run", [["touch", "TARGET"]], {}),
    ("sys.modules", [], {}),
    ("sys.exit", [1], {}),
    ("importlib.import_module", ["os"], {}),
    ("pickle.loads", [b"cos\nsystem\n(S'touch TARGET'\ntR."], {}),
    ("marshal.loads", [b"\xe3"], {}),
    ("ctypes.CDLL", ["libc.so.6"], {}),
    ("shutil.rmtree", ["TMP"], {}),
    ("tether.ops.table.ALLOWLIST", [], {}),
    # spellings of allowed names that must not resolve
    ("", [], {}),
    ("torch.add\x00", [Ref(X), 1], {}),
    (" torch.add", [Ref(X), 1], {}),
    ("TORCH.ADD", [Ref(X), 1], {}),
    ("torch..add", [Ref(X), 1], {}),
    ("torch/add", [Ref(X), 1], {}),
]


def _fill(value: object, paths: dict[str, str]) -> object:
    """Puts the test's real paths where an attempt names SECRET, TARGET or TMP."""
    if isinstance(value, str):
        for name, path in paths.items():
            value = value.replace(name, path)
        return value
    if isinstance(value, list):
        return [_fill(v, paths) for v in value]
    return value


@pytest.mark.parametrize(("op", "args", "kwargs"), ESCAPES, ids=[repr(e[0]) for e in ESCAPES])
def test_escape_is_refused(node: Node, tmp_path: Path, op: str, args: list, kwargs: dict) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    paths = {"SECRET": str(secret), "TARGET": str(tmp_path / "target"), "TMP": str(tmp_path)}
    command = Call(op, _fill(args, paths), kwargs, OUT)
    with watch() as ran:
        raw = node.run(encode([command]), CLIENT).parts().join()
    reply = only_failure(decode(raw))
    assert reply.kind == "NotAllowedError"
    assert repr(op) in reply.message
    assert "dunder" in reply.message if "__" in op else "allowlist" in reply.message
    assert not ran
    assert b"TOPSECRET" not in raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"]
    assert secret.read_text() == "TOPSECRET"
    missing = only_failure(send(node, Get([OUT])))
    assert missing.kind == "ObjectNotFoundError" and repr(op) in missing.message
    assert_serves(node)


NOT_AN_ID = ("TypeError", "is not an object id")
NOT_STORED = ("ObjectNotFoundError", "is not on worker 'owner'")


@pytest.mark.parametrize(
    ("arg", "refused"),
    [
        ("torch.load", NOT_AN_ID),
        ([X], NOT_AN_ID),
        ({"id": X}, NOT_AN_ID),
        (1.0, NOT_AN_ID),
        (True, NOT_AN_ID),
        (None, NOT_AN_ID),
        (-1, NOT_STORED),
        (2**64 - 1, NOT_STORED),
    ],
    ids=repr,
)
def test_a_reference_that_names_no_object_is_refused(
    node: Node, arg: object, refused: tuple[str, str]
) -> None:
    """A Call's `refs` bitmask may mark any positional argument as an object id: one that is
    not an id of a stored object is refused, and nothing runs."""
    with watch() as ran:
        reply = only_failure(send(node, Call("torch.add", [arg, 1], {}, OUT, refs=1)))
    assert (reply.kind, refused[1] in reply.message) == (refused[0], True), reply
    assert repr(arg) in reply.message or str(arg) in reply.message
    assert not ran
    assert only_failure(send(node, Get([OUT]))).kind == "ObjectNotFoundError"
    assert_serves(node)


def _resolve(path: str) -> object:
    """What `path` names in Python, found as a resolver without an allowlist would find it:
    the longest importable module, then attribute after attribute (or key, in a dict)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = obj[name] if isinstance(obj, dict) and name in obj else getattr(obj, name)
        return obj
    raise LookupError(path)


def test_escapes_name_real_objects_and_none_is_in_the_allowlist() -> None:
    """Each escape above names something that exists (so its refusal is the allowlist's doing,
    not a typo's) and that the allowlist does not hold; nor does the allowlist hold any of the
    dangerous functions `watch` looks for, under any name."""
    spellings = {"", "torch.add\x00", " torch.add", "TORCH.ADD", "torch..add", "torch/add"}
    named = {op for op, _, _ in ESCAPES} - spellings
    assert len(named) >= 40
    for op in sorted(named):
        _resolve(op)  # raises if the name names nothing
        assert op not in ALLOWLIST, op
    for path, entry in ALLOWLIST.items():
        assert id(entry.fn) not in _DANGEROUS_C, path
        assert getattr(entry.fn, "__code__", None) not in _DANGEROUS_PY, path
        assert "__" not in path, path


# ---- allocations larger than the node allows ------------------------------------------------


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Replace an allowlisted function by one that records calls and allocates nothing."""
    calls: dict[str, list] = {}

    def install(path: str) -> list:
        calls[path] = []
        record = calls[path].append
        monkeypatch.setitem(
            ALLOWLIST, path, dataclasses.replace(ALLOWLIST[path], fn=lambda *a, **k: record((a, k)))
        )
        return calls[path]

    return install


HUGE = 10**6
ALLOCATIONS = [
    ("torch.zeros", [HUGE, HUGE], {}),
    ("torch.ones", [(2**20, 2**20)], {}),
    ("torch.empty", [], {"size": (HUGE, HUGE)}),
    ("torch.full", [(HUGE, HUGE), 1.5], {}),
    ("torch.full", [], {"size": (HUGE, HUGE), "fill_value": 1}),
    ("torch.rand", [HUGE, HUGE], {}),
    ("torch.randn", [[HUGE, HUGE]], {}),
    ("torch.randint", [0, 5, (HUGE, HUGE)], {}),
    ("torch.randperm", [10**12], {}),
    ("torch.arange", [0, 10**12], {}),
    ("torch.arange", [10**12], {}),
    ("torch.arange", [], {"end": 10**12}),
    ("torch.arange", [0], {"end": 10**12, "step": 1}),
    ("torch.linspace", [0, 1, 10**12], {}),
    ("torch.eye", [HUGE], {}),
    ("torch.Tensor.expand", [Ref(X), 10**9, 3], {}),
    ("torch.broadcast_to", [Ref(X), (10**9, 3)], {}),
    ("torch.Tensor.repeat", [Ref(X), 10**5, 10**5], {}),
    ("torch.tile", [Ref(X), (10**5, 10**5)], {}),
    ("torch.Tensor.repeat_interleave", [Ref(X), 10**9], {}),
    ("torch.Tensor.new_zeros", [Ref(X), (HUGE, HUGE)], {}),
    ("torch.Tensor.new_full", [Ref(X), (HUGE, HUGE), 0.0], {}),
    ("torch.Tensor.unfold", [Ref(VEC), 0, N // 2, 1], {}),
    ("operator.add", [Ref(COL), Ref(ROW)], {}),
    ("torch.add", [Ref(COL), Ref(ROW)], {}),
    ("torch.Tensor.mul", [Ref(COL), Ref(ROW)], {}),
    ("torch.maximum", [Ref(COL), Ref(ROW)], {}),
    ("torch.outer", [Ref(VEC), Ref(VEC)], {}),
    ("torch.kron", [Ref(VEC), Ref(VEC)], {}),
    ("operator.matmul", [Ref(COL), Ref(ROW)], {}),
    ("torch.mm", [Ref(COL), Ref(ROW)], {}),
    ("torch.Tensor.matmul", [Ref(COL), Ref(ROW)], {}),
]


GROWING_OPS = [  # ops whose output outgrows their inputs, each with its own guard
    pytest.param("torch.full", [(N, N), 7], {}, id="full-int-fill"),
    pytest.param("torch.randperm", [], {"n": 10**5}, id="randperm-n-keyword"),
    pytest.param("torch.Tensor.new_zeros", [Ref(X), N, N], {}, id="new_zeros-varargs"),
    pytest.param("torch.addmm", [torch.zeros(1), Ref(COL), Ref(ROW)], {}, id="addmm"),
    pytest.param("torch.nn.functional.pad", [Ref(X), (0, 10**5)], {}, id="pad"),
    pytest.param(
        "torch.nn.functional.one_hot", [torch.tensor([0])], {"num_classes": 10**5}, id="one_hot"
    ),
    pytest.param("torch.bincount", [torch.tensor([10**5])], {}, id="bincount"),
    pytest.param(
        "operator.getitem",
        [Ref(ROW), torch.zeros(N, dtype=torch.long)],
        {},
        id="getitem-index-tensor",
    ),
    pytest.param(
        "torch.nn.functional.conv_transpose1d",
        [torch.ones(1, 1, 2), torch.ones(1, 1, 1)],
        {"stride": 10**5},
        id="conv_transpose-stride",
    ),
    pytest.param("torch.nn.functional.mse_loss", [Ref(COL), Ref(ROW)], {}, id="mse_loss-broadcast"),
    pytest.param("torch.dist", [Ref(COL), Ref(ROW)], {}, id="dist-broadcast"),
    pytest.param("torch.nn.Linear", [1000, 1000], {}, id="Linear"),
    pytest.param("torch.nn.Embedding", [10**5, 100], {}, id="Embedding"),
    pytest.param("operator.mul", [[0], 10**6], {}, id="list-repeat"),
    pytest.param("operator.mul", [b"x", 10**8], {}, id="bytes-repeat"),
]


@pytest.mark.parametrize(("op", "args", "kwargs"), ALLOCATIONS + GROWING_OPS)
def test_allocation_is_refused_before_it_runs(
    node: Node, spy, op: str, args: list, kwargs: dict
) -> None:
    calls = spy(op)
    reply = only_failure(send(node, Call(op, args, kwargs, OUT)))
    assert reply.kind == "LimitError"
    assert op in reply.message and f"{LIMIT:,}" in reply.message
    assert not calls, f"{op} ran before it was refused"
    assert_serves(node)


# ---- methods on the wrong kind of object ----------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("torch.optim.Optimizer.step", [Ref(X)]),
        ("torch.optim.Optimizer.zero_grad", [Ref(LIN)]),
        ("torch.nn.Module.call", [Ref(X), Ref(X)]),
        ("torch.nn.Module.forward", [Ref(OPT), Ref(X)]),
        ("torch.nn.Module.parameters", [Ref(LST)]),
        ("torch.nn.Module.load_state_dict", [Ref(X), {}]),
        ("torch.Tensor.add", [Ref(LIN), 1]),
        ("torch.Tensor.grad", [Ref(OPT)]),
        ("tether.assign", [Ref(LIN), Ref(X)]),
        ("tether.optim.set_hyperparameters", [Ref(X), []]),
        ("torch.Tensor.backward", []),
    ],
)
def test_method_on_wrong_self_type_is_refused(node: Node, spy, op: str, args: list) -> None:
    calls = spy(op)
    reply = only_failure(send(node, Call(op, args, {}, OUT)))
    assert reply.kind == "TypeError" and op in reply.message and "first argument" in reply.message
    assert not calls
    assert_serves(node)


# ---- callables cannot be smuggled -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        lambda x: x,
        print,
        torch.add,
        torch.nn.Linear,
        torch.nn.Linear(1, 1),
        os,
        object(),
        torch.Tensor.add,
    ],
    ids=lambda v: type(v).__name__,
)
def test_callables_have_no_wire_form(value: object) -> None:
    with pytest.raises(TypeError, match="cannot be sent"):
        encode([Call("builtins.max", [[1, 2]], {"key": value}, OUT)])
    with pytest.raises(TypeError, match="cannot be sent"):
        encode([Put(OUT, [value])])


def test_key_function_can_only_be_a_stored_layer(node: Node) -> None:
    """A Ref to a stored layer is the only callable a peer can name; passing it as `key=` runs
    that allowlisted layer and nothing else."""
    pair = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    _, state = send(node, Call("torch.nn.Module.state_dict", [Ref(SCORER)], {}, 70), Get([70]))
    weight, bias = state.value[0]["weight"], state.value[0]["bias"]
    scores = [torch.nn.functional.linear(t, weight, bias).item() for t in pair]
    with watch() as ran:
        done, value = send(
            node, Call("builtins.max", [pair], {"key": Ref(SCORER)}, OUT), Get([OUT])
        )
        not_callable = send(
            node,
            Call("builtins.max", [pair], {"key": Ref(OPT)}, OUT + 1),
            Call("builtins.max", [pair], {"key": Ref(X)}, OUT + 2),
        )
    assert not ran
    assert isinstance(done, Done)
    assert torch.equal(value.value[0], pair[scores.index(max(scores))])  # the layer's choice
    for reply in not_callable:
        assert isinstance(reply, Failure) and "not callable" in reply.message
    assert_serves(node)


# ---- malformed frames -----------------------------------------------------------------------

_VALID = bytes(encode([Call("torch.add", [Ref(X), 1], {}, OUT)]))
GARBAGE = {
    "empty": b"",
    "text": b"GET / HTTP/1.1\r\n\r\n",
    "random": random.Random(0).randbytes(1024),
    "prefix and junk": _VALID[:12] + b"\xc1" * 20,
    "truncated": _VALID[:-5],
    "extended": _VALID + b"\x00" * 8,
    "an older version": b"TT\x01" + _VALID[3:],
    "pickle": pickle.dumps(torch.ones(2)),
}


@pytest.mark.parametrize("data", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_frame_gets_a_wire_error(node: Node, data: bytes) -> None:
    reply = only_failure(decode(node.run(data, CLIENT).parts().join()))
    assert reply.kind == "WireError" and reply.message
    assert_serves(node)


@pytest.mark.parametrize("state", [16, -1, 2**63, "float64", 1.0, True, None, [0, 0, 0]], ids=repr)
def test_a_bogus_torch_state_is_refused(node: Node, state: object) -> None:
    """`Call.state` is peer input: anything but a state code (0 to 15) is a malformed frame,
    refused before anything runs, and the node's own state is untouched."""
    reply = only_failure(send(node, Call("torch.add", [Ref(X), 1], {}, OUT, 0, state)))  # type: ignore[arg-type]
    assert reply.kind == "WireError" and "state: a torch state code (0 to 15)" in reply.message
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32
    assert_serves(node)


def test_every_state_code_runs_and_leaves_the_node_as_it_was(node: Node) -> None:
    replies = send(node, *[Call("torch.ones", [2], {}, OUT + s, 0, s) for s in range(16)])
    assert all(isinstance(r, Done) for r in replies), replies
    dtypes = [r.meta[2] for r in replies]
    assert dtypes == ["float32"] * 4 + ["float64"] * 4 + ["float16"] * 4 + ["bfloat16"] * 4
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    assert torch.get_default_dtype() == torch.float32
    assert_serves(node)


def test_replies_are_not_commands(node: Node) -> None:
    reply = only_failure(send(node, Value(torch.ones(1))))
    assert reply.kind == "WireError" and "Value" in reply.message
    assert_serves(node)


@pytest.mark.parametrize(
    "commands",
    [
        [Call("operator.pow", [10, 30], {}, OUT), Get([OUT])],
        [Call("builtins.str", [b"\xed\xa0\x80", "utf-8", "surrogateescape"], {}, OUT), Get([OUT])],
    ],
    ids=["int beyond 64 bits", "lone surrogates"],
)
def test_unencodable_value_gets_a_failure(node: Node, commands: list) -> None:
    replies = send(node, *commands)
    assert isinstance(replies[0], Done) and isinstance(replies[1], Failure)
    assert_serves(node)


def test_misaligned_complex_tensor_does_not_kill_the_node() -> None:
    script = textwrap.dedent("""
        import torch
        from tether.node import Node
        from tether.wire import Call, Put, Ref, encode
        for size in (3, 2**14):  # a few bytes, and 256 KiB
            frame = bytes(encode([Put(1, torch.ones(size, dtype=torch.complex128)),
                                  Call("torch.Tensor.clone", [Ref(1)], {}, 2)]))
            for shift in (0, 8):  # wherever the receiving buffer happens to start
                Node("owner").run(memoryview(bytearray(shift) + frame)[shift:]).parts().join()
        print("survived")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "survived" in done.stdout, done.returncode


# ---- the owner's published data -------------------------------------------------------------

SECRET_VALUE = torch.tensor([10.25, 20.5, 30.75])  # no id, size or count is one of these
PRIVATE = private_values(SECRET_VALUE)


def owner_node(release: str = "open") -> tuple[Node, torch.Tensor]:
    """A node whose owner published a private tensor; the attacker holds a pointer to it."""
    node = Node("owner", limits=Limits(max_elements=LIMIT), release=release)
    secret = SECRET_VALUE.clone()
    node.publish("secret", secret)
    replies = send(node, Call("tether.published", ["secret"], {}, SECRET), Put(X, ORIGINAL.clone()))
    assert all(isinstance(r, Done) for r in replies), replies
    return node, secret


NO_SUCH_KEY = ("ObjectNotFoundError", "worker 'owner' publishes no ")
NOT_A_KEY = ("TypeError", "tether.published takes a key and an optional item index")


@pytest.mark.parametrize(
    ("args", "kwargs", "refused"),
    [
        (["nothing"], {}, NO_SUCH_KEY),
        ([Ref(X)], {}, NOT_A_KEY),
        ([], {}, NOT_A_KEY),
        (["secret"], {"key": "secret"}, NOT_A_KEY),
        (["__class__"], {}, NO_SUCH_KEY),
        ([["secret"]], {}, NOT_A_KEY),
    ],
    ids=["unknown key", "ref", "no key", "keyword", "dunder key", "list key"],
)
def test_published_is_reached_by_key_only(args: list, kwargs: dict, refused: tuple) -> None:
    node, _ = owner_node()
    reply = only_failure(send(node, Call("tether.published", args, kwargs, OUT)))
    assert reply.kind == refused[0] and refused[1] in reply.message, reply
    assert only_failure(send(node, Get([OUT]))).kind == "ObjectNotFoundError"  # nothing stored
    assert_serves(node)


def test_private_published_object_cannot_be_fetched() -> None:
    node, _ = owner_node()
    reply = only_failure(send(node, Get([SECRET])))
    assert reply.kind == "RequestPendingError"
    assert f"object {SECRET} on worker 'owner' is private" in reply.message
    assert not leaked(reply, PRIVATE)
    assert_serves(node)


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("torch.Tensor.add_", [Ref(SECRET), 1]),
        ("torch.Tensor.zero_", [Ref(SECRET)]),
        ("torch.Tensor.copy_", [Ref(SECRET), Ref(X)]),
        ("torch.Tensor.requires_grad_", [Ref(SECRET)]),
        ("torch.Tensor.unsqueeze_", [Ref(SECRET), 0]),
        ("operator.setitem", [Ref(SECRET), 0, 0.0]),
        ("tether.assign", [Ref(SECRET), Ref(X)]),
    ],
)
def test_owner_data_is_not_changed_in_place(op: str, args: list) -> None:
    node, secret = owner_node()
    reply = only_failure(send(node, Call(op, args, {}, None)))
    assert reply.kind == "NotAllowedError" and op in reply.message and "in place" in reply.message
    assert torch.equal(secret, SECRET_VALUE)
    assert_serves(node)


@pytest.mark.parametrize("view", ["torch.Tensor.view", "torch.Tensor.detach", "torch.Tensor.data"])
def test_views_of_owner_data_are_not_changed_in_place(view: str) -> None:
    node, secret = owner_node()
    args = [Ref(SECRET), -1] if view.endswith("view") else [Ref(SECRET)]
    made, refused = send(
        node, Call(view, args, {}, OUT), Call("torch.Tensor.mul_", [Ref(OUT), 0], {}, None)
    )
    assert isinstance(made, Done)
    assert isinstance(refused, Failure) and refused.kind == "NotAllowedError"
    assert torch.equal(secret, SECRET_VALUE)


def test_out_keyword_does_not_write_owner_data() -> None:
    node, secret = owner_node()
    send(node, Call("torch.add", [Ref(X), 100], {"out": Ref(SECRET)}, None))
    assert torch.equal(secret, SECRET_VALUE)


def test_owner_data_stays_read_only_through_a_list() -> None:
    node, secret = owner_node()
    send(
        node,
        Call("builtins.list", [[Ref(SECRET)]], {}, LST),
        Call("operator.getitem", [Ref(LST), 0], {}, OUT),
        Call("torch.Tensor.add_", [Ref(OUT), 1000], {}, None),
    )
    assert torch.equal(secret, SECRET_VALUE)


@pytest.mark.parametrize(
    ("op", "args", "kwargs"),
    [
        ("torch.Tensor.copy_", [Ref(OUT), Ref(SECRET)], {}),
        ("tether.assign", [Ref(OUT), Ref(SECRET)], {}),
        ("operator.setitem", [Ref(OUT), slice(None), Ref(SECRET)], {}),
        ("torch.add", [Ref(SECRET), 0], {"out": Ref(OUT)}),
    ],
    ids=["copy_", "assign", "setitem", "out="],
)
def test_private_values_do_not_leak_into_the_attackers_tensor(
    op: str, args: list, kwargs: dict
) -> None:
    """Writing private values into one's own tensor makes that tensor derived data."""
    node, _ = owner_node(release="strict")
    replies = send(node, Put(OUT, torch.zeros(3)), Call(op, args, kwargs, None), Get([OUT]))
    assert isinstance(replies[1], Done), replies[1]
    assert isinstance(replies[-1], Failure) and replies[-1].kind == "RequestPendingError"
    assert not leaked(replies, PRIVATE)
    # the owner's view: the attacker's tensor did get the private values, and is held back
    assert torch.equal(node.store(CLIENT).objects[OUT].value, SECRET_VALUE)


@pytest.mark.parametrize("release", ["open", "training", "strict"])
def test_a_refused_allocation_on_private_data_is_quiet_outside_open(release: str) -> None:
    """`repeat` of the owner's tensor past the limit is refused. An open node says so (and by
    how much); elsewhere the refusal would be a channel from the data (its size), so the
    result is poisoned and the reply is the one a success gets. The owner sees the cause."""
    node, _ = owner_node(release=release)
    times = LIMIT // len(SECRET_VALUE) + 1
    command = Call("torch.Tensor.repeat", [Ref(SECRET), times], {}, OUT)
    if release == "open":
        reply = only_failure(send(node, command))
        assert reply.kind == "LimitError" and f"{len(SECRET_VALUE) * times:,}" in reply.message
    else:
        assert send(node, command) == [Done()]
        assert send(node, Call("torch.Tensor.repeat", [Ref(SECRET), 2], {}, OUT + 1)) == [Done()]
        poisoned = node.store(CLIENT).objects[OUT].value
        assert "LimitError" in poisoned.cause and f"{LIMIT:,}" in poisoned.cause
    assert_serves(node)


@pytest.mark.parametrize("release", ["open", "strict"])
def test_a_store_over_its_limit_is_quiet_about_private_sizes(release: str) -> None:
    node, _ = owner_node(release=release)
    node.store(CLIENT).max_bytes = 200  # it holds 128: two objects of at least 64 bytes
    replies = send(node, Call("torch.Tensor.repeat", [Ref(SECRET), 9], {}, OUT))
    if release == "open":
        reply = only_failure(replies)
        assert reply.kind == "LimitError" and "storing 108 bytes" in reply.message
    else:
        assert replies == [Done()]
        assert "storing 108 bytes" in node.store(CLIENT).objects[OUT].value.cause
        send(node, Delete([OUT]))  # (the poisoned record takes room too)
    assert_serves(node)


def test_optimizer_cannot_step_owner_data() -> None:
    node, secret = owner_node()
    send(
        node,
        Call("torch.nn.Parameter", [Ref(SECRET)], {}, 60),
        Call("torch.optim.SGD", [[Ref(60)]], {"lr": 1.0}, 61),
        Call("torch.sum", [Ref(60)], {}, 62),
        Call("torch.Tensor.backward", [Ref(62)], {}, None),
        Call("torch.optim.Optimizer.step", [Ref(61)], {}, None),
    )
    assert torch.equal(secret, SECRET_VALUE)


# ---- the same attempts through pointers -----------------------------------------------------


@pytest.fixture
def bob() -> tether.VirtualWorker:
    return tether.VirtualWorker("bob")


def assert_worker_serves(pointer: tether.Pointer) -> None:
    assert torch.equal((pointer + 1).get(), torch.full((3,), 2.0))


def test_pointer_dunders_stay_local(bob: tether.VirtualWorker) -> None:
    p = torch.ones(3).send(bob)
    assert p.__class__ is tether.Pointer
    assert_worker_serves(p)


@pytest.mark.parametrize(
    "name",
    [
        "storage",
        "untyped_storage",
        "numpy",
        "data_ptr",
        "register_hook",
        "set_",
        "apply_",
        "map_",
        "resize_",
        "as_strided",
        "share_memory_",
        "tofile",
        "_base",
    ],
)
def test_pointer_has_no_raw_memory_attributes(bob: tether.VirtualWorker, name: str) -> None:
    p = torch.ones(3).send(bob)
    refused = (
        f"^{name}$"  # a private name is never sent at all
        if name.startswith("_")
        else rf"^'torch\.Tensor\.{name}' is not a remote attribute tether allows \(pointer"
    )
    with pytest.raises(AttributeError, match=refused):
        getattr(p, name)
    assert_worker_serves(p)


NOT_ALLOWED = r"is not in tether's allowlist, so it cannot run on worker 'bob'"


@pytest.mark.parametrize(
    ("attempt", "error", "refused"),
    [
        (lambda p: torch.as_strided(p, (3,), (1,)), NotAllowedError, rf"as_strided {NOT_ALLOWED}"),
        (lambda p: torch.Tensor.storage(p), NotAllowedError, rf"Tensor\.storage {NOT_ALLOWED}"),
        (lambda p: torch.ops.aten.add(p, p), NotAllowedError, rf"aten\..*add {NOT_ALLOWED}"),
        # torch.load reads a file-like object: the pointer offers none of a file's methods
        (lambda p: torch.load(p), AttributeError, r"'torch\.Tensor\.seek' is not a remote attr"),
    ],
    ids=["as_strided", "Tensor.storage", "ops.aten", "load"],
)
def test_torch_on_a_pointer_is_refused(
    bob: tether.VirtualWorker, attempt, error: type, refused: str
) -> None:
    p = torch.ones(3).send(bob)
    sent = []
    transport = bob.client.transport
    exchange = transport.exchange
    transport.exchange = lambda commands, *rest: sent.append(commands) or exchange(commands, *rest)
    with pytest.raises(error, match=refused):
        attempt(p)
    bob.flush()
    assert not sent  # refused here: nothing reached the worker
    assert_worker_serves(p)


@pytest.mark.parametrize(
    "op", ["torch.load", "torch.save", "builtins.eval", "os.system", "torch.Tensor.__class__"]
)
def test_remote_name_outside_the_allowlist_raises_at_sync(
    bob: tether.VirtualWorker, op: str
) -> None:
    p = torch.ones(3).send(bob)
    bob.client.call(op, [Ref(p.id), "x"])
    with pytest.raises(NotAllowedError, match=re.escape(repr(op))):
        bob.flush()
    assert_worker_serves(p)


@pytest.mark.parametrize(
    "attempt",
    [
        lambda p: p.expand(10**9, 3),
        lambda p: p.repeat(10**5, 10**5),
        lambda p: p.new_zeros((10**6, 10**6)),
    ],
    ids=["expand", "repeat", "new_zeros"],
)
def test_pointer_allocation_is_refused(bob: tether.VirtualWorker, attempt) -> None:
    p = torch.ones(3).send(bob)
    attempt(p)
    with pytest.raises(LimitError):
        bob.flush()
    assert_worker_serves(p)


def test_saving_a_pointer_raises_a_tether_error(bob: tether.VirtualWorker, tmp_path: Path) -> None:
    p = torch.ones(3).send(bob)
    with pytest.raises(NotAllowedError, match=r"a pointer cannot be pickled or saved \(torch"):
        torch.save(p, tmp_path / "p.pt")


def test_delete_of_unknown_ids_is_harmless(node: Node) -> None:
    (reply,) = send(node, Delete([0, 2**64 - 1, OUT]))
    assert isinstance(reply, Done)
    assert_serves(node)


# ---- calls with several outs ----------------------------------------------------------------

PIECES = [60, 61, 62, 63]


def test_several_outs_store_each_result(node: Node) -> None:
    done, value = send(node, Call("torch.Tensor.split", [Ref(VEC), 64], {}, PIECES), Get(PIECES))
    assert done.meta == [["tensor", [64], "float32", False]] * 3 + [
        ["tensor", [8], "float32", False]
    ]
    assert [len(v) for v in value.value] == [64, 64, 64, 8]
    assert_serves(node)


@pytest.mark.parametrize(
    "op, args, refused",
    [
        ("torch.Tensor.split", [Ref(VEC), 100], "gave 2 results, not the 4 asked for"),
        ("torch.sub", [Ref(X), 1], "gave one result, not the 4 asked for"),
    ],
)
def test_several_outs_must_match_the_results(node: Node, op: str, args: list, refused: str) -> None:
    failure = only_failure(send(node, Call(op, args, {}, PIECES)))
    assert failure.kind == "TypeError" and refused in failure.message and op in failure.message
    (missing,) = send(node, Get([PIECES[0]]))
    assert isinstance(missing, Failure) and "failed" in missing.message  # nothing half-stored
    assert_serves(node)


@pytest.mark.parametrize("out", [[], [OUT, OUT], [OUT, -1], [OUT, "x"], [[OUT]]])
def test_malformed_outs_are_refused(node: Node, out: list) -> None:
    failure = only_failure(send(node, Call("torch.Tensor.split", [Ref(VEC), 64], {}, out)))
    assert failure.kind == "WireError" and "out: id, ids or null" in failure.message
    assert_serves(node)


def test_special_calls_take_a_single_out(node: Node) -> None:
    node.publish("data", torch.ones(4))
    for op, args in [("tether.published", ["data"]), ("tether.request", [Ref(X), "n", "r"])]:
        failure = only_failure(send(node, Call(op, args, {}, PIECES)))
        assert failure.kind == "TypeError", failure
    assert not runs_on_loop(node, [Call("operator.add", [Ref(X), 1], {}, PIECES)], CLIENT)
    assert_serves(node)
