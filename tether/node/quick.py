"""The websocket server's fast path: which frames run on its event loop as they arrive.

A small frame whose commands surely finish in microseconds (elementwise operators on small
tensors, fetches of small values the client may have without asking, frees) is answered on the
server's event loop instead of going to the connection's thread and back. What it buys: two
thread wake-ups, ~70 µs of a ~300 µs small blocking round trip (`benchmarks/bench_transport.py`
(a); BENCHMARKS.md, transport). Everything else runs on the connection's thread, so a long
command never stalls other clients or the pings.

It re-derives the release rule (`policy.releases`, by the objects' marks) to choose which
frames run on the loop; the Get itself still decides with `policy.may_leave`.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from tether.node.node import SCALARS, Node, object_id
from tether.node.policy import DERIVED, OPEN, PUBLIC, releases
from tether.node.store import Privacy
from tether.wire import Call, Delete, Get

# What runs on the loop: elementwise operators (at most two operands) on tensors of
# at most this many elements, so a quick frame computes at most this squared.
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
# Outside the open policy a Get also checks the memory of the client's private and derived
# objects (`policy.may_leave`): on the loop only while there are at most this many objects.
QUICK_STORE_OBJECTS = 256


def runs_on_loop(node: Node, commands: list, client: str = "local") -> bool:
    """Whether these commands surely finish in microseconds: elementwise operators on
    small tensors, fetching small values the client may have without asking, freeing.
    A server may run such a frame where it stands instead of handing it to a thread."""
    objects = node.store(client).objects
    made: dict[int, tuple[int, Privacy]] = {}  # what earlier commands of the frame make

    def object_size_and_privacy(obj_id: int | None) -> tuple[int, Privacy] | None:
        if type(obj_id) is not int:
            return None
        if obj_id in made:
            return made[obj_id]
        stored = objects.get(obj_id)
        if stored is None or not isinstance(stored.value, torch.Tensor):
            return None
        return stored.value.numel(), stored.privacy

    def size_and_privacy(cmd: Call, i: int) -> tuple[int, Privacy] | None:
        obj_id = object_id(cmd, i)
        if obj_id is not None:
            return object_size_and_privacy(obj_id)
        return (1, PUBLIC) if type(cmd.args[i]) in SCALARS else None

    for cmd in commands:
        if isinstance(cmd, Delete):
            continue
        if isinstance(cmd, Get):
            if node.release is not OPEN and len(objects) > QUICK_STORE_OBJECTS:
                return False
            for obj_id in cmd.ids:
                found = object_size_and_privacy(obj_id)
                if (
                    cmd.wait
                    or found is None
                    or found[0] > QUICK_ELEMENTS
                    or not releases(found[1], node.release)
                ):
                    return False
        elif (
            isinstance(cmd, Call)
            and cmd.op in QUICK_OPS
            and not cmd.kwargs
            and type(cmd.out) is not list
        ):  # elementwise ops give one result
            sizes = [size_and_privacy(cmd, i) for i in range(len(cmd.args))]
            if None in sizes:
                return False
            inputs = cast(list[tuple[int, Privacy]], sizes)
            if max((n for n, _ in inputs), default=1) > QUICK_ELEMENTS:
                return False
            if cmd.out is not None:  # broadcasting at most multiplies the sizes
                derived = any(p > PUBLIC for _, p in inputs)
                made[cast(int, cmd.out)] = (
                    math.prod(n for n, _ in inputs),
                    DERIVED if derived else PUBLIC,
                )
        else:
            return False
    return True
