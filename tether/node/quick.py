"""The websocket server's fast path: which frames run on its event loop as they arrive.

A small frame whose commands surely finish in microseconds (elementwise operators on small
tensors, fetches of small values the client may have without asking, frees) is answered on the
server's event loop instead of going to the connection's thread and back. What it buys: two
thread wake-ups, ~100 µs of a ~300 µs small blocking round trip (`benchmarks/bench_transport.py`
(a), measured with and without it: 290-337 µs against 402-430 µs). Everything else runs on the
connection's thread: the loop serves every client and the pings, so what runs on it must be
bounded by what it touches (elements, commands, objects freed), never by the frame's bytes.

It re-derives the release rule (`policy.releases`, by the objects' marks) to choose which
frames run on the loop; the Get itself still decides with `policy.may_leave`.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from tether.node.node import Answer, Node, object_id
from tether.node.policy import DERIVED, OPEN, PUBLIC, releases
from tether.node.state import DEFAULT_DTYPE
from tether.node.store import Privacy, Stored
from tether.wire import Call, Delete, Get, torchstate

# What runs on the loop: elementwise operators (at most two operands) on tensors of at most
# QUICK_ELEMENTS elements, in frames of at most QUICK_COMMANDS commands whose element-ops
# (an operator's operands' sizes multiplied, a fetch's or free's elements) add up to at most
# QUICK_FRAME_ELEMENTS: under a millisecond (0.65 ms for 64 operators here), whatever the bytes.
QUICK_OPS = frozenset(
    f"operator.{name}"
    for name in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "neg",
        "pos",
        "abs",
        "invert",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "xor",
    )
)
QUICK_ELEMENTS = 4096
QUICK_FRAME_ELEMENTS = 50_000
QUICK_COMMANDS = 64
# Numbers only: `"a" * 2**28` is one operator too.
_NUMBERS = frozenset((int, float, bool))
# Outside the open policy a Get walks the memory of the client's private and derived objects
# (`policy.may_leave`): on the loop only while there are at most this many, all of them tensors.
QUICK_STORE_OBJECTS = 256


def answer_on_loop(node: Node, commands: list, client: str) -> Answer | None:
    """The node's answer to a frame that surely finishes in microseconds (`runs_on_loop`),
    run here and now; None for a frame to hand to the connection's thread instead, and for
    any frame while another thread runs commands under another default dtype (the loop never
    waits for it: see `tether.node.state`)."""
    if not runs_on_loop(node, commands, client) or not DEFAULT_DTYPE.enter_shared(blocking=False):
        return None
    try:
        return node.run(commands, client)
    finally:
        DEFAULT_DTYPE.leave_shared()


def runs_on_loop(node: Node, commands: list, client: str = "local") -> bool:
    """Whether these commands surely finish in microseconds: few elementwise operators on small
    tensors, fetching small values the client may have without asking, freeing tensors.
    A server may run such a frame where it stands instead of handing it to a thread.
    Everything they touch is costed, freeing included: replacing or deleting an object that is
    not a tensor (a list of 2**27 items, say) could take seconds."""
    if len(commands) > QUICK_COMMANDS:
        return False
    objects = node.store(client).objects
    dtype = torchstate.current() & torchstate.DTYPE_BITS  # the loop's, which it keeps
    made: dict[int, tuple[int, Privacy]] = {}  # what earlier commands of the frame make
    budget = QUICK_FRAME_ELEMENTS

    def tensor_at(obj_id: object) -> tuple[int, Privacy] | None:
        """Elements and privacy of the tensor `obj_id` names; None if it names no tensor."""
        if type(obj_id) is not int:
            return None
        if obj_id in made:
            return made[obj_id]
        stored = objects.get(obj_id)
        if stored is None or not isinstance(stored.value, torch.Tensor):
            return None
        return stored.value.numel(), stored.privacy

    def freed(obj_id: object) -> int | None:
        """What dropping the object under `obj_id` costs (None: too much to know)."""
        if type(obj_id) is int and obj_id not in made and obj_id not in objects:
            return 1
        found = tensor_at(obj_id)
        return None if found is None else max(found[0], 1)

    def operand(cmd: Call, i: int) -> tuple[int, Privacy | None] | None:
        """Elements and privacy of a Call's operand (privacy None: a number in the frame)."""
        obj_id = object_id(cmd, i)
        if obj_id is not None:
            return tensor_at(obj_id)
        return (1, None) if type(cmd.args[i]) in _NUMBERS else None

    for cmd in commands:
        if isinstance(cmd, Delete):
            for obj_id in cmd.ids:
                cost = freed(obj_id)
                if cost is None:
                    return False
                budget -= cost
                made.pop(obj_id, None)
        elif isinstance(cmd, Get):
            if cmd.wait or (node.release is not OPEN and not _small_marked_store(objects)):
                return False
            for obj_id in cmd.ids:
                found = tensor_at(obj_id)
                if found is None or not releases(found[1], node.release):
                    return False
                budget -= max(found[0], 1)
        elif (
            isinstance(cmd, Call)
            and cmd.op in QUICK_OPS
            and cmd.state & torchstate.DTYPE_BITS == dtype
            and not cmd.kwargs
            and (cmd.out is None or type(cmd.out) is int)
        ):  # elementwise ops give one result
            sizes = [operand(cmd, i) for i in range(len(cmd.args))]
            if None in sizes:
                return False
            inputs = cast(list[tuple[int, Privacy | None]], sizes)
            if max((n for n, _ in inputs), default=1) > QUICK_ELEMENTS:
                return False
            marked = {p > PUBLIC for _, p in inputs if p is not None}
            # Outside open, a public operand of private data becomes derived, and so does all
            # of the store that shares its memory (`policy.taint`): a walk, left to the thread.
            if node.release is not OPEN and marked == {True, False}:
                return False
            elements = math.prod(n for n, _ in inputs)  # broadcasting at most multiplies sizes
            budget -= elements
            if cmd.out is not None:
                cost = freed(cmd.out)  # what the result replaces
                if cost is None:
                    return False
                budget -= cost
                made[cmd.out] = (elements, DERIVED if True in marked else PUBLIC)
        else:
            return False
        if budget < 0:
            return False
    return True


def _small_marked_store(objects: dict[int, Stored]) -> bool:
    """Whether a Get's walk of the client's private and derived objects is surely short."""
    return len(objects) <= QUICK_STORE_OBJECTS and all(
        s.privacy == PUBLIC or isinstance(s.value, torch.Tensor) for s in objects.values()
    )
