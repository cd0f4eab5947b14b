"""The messages a client and a node exchange: plain data, nothing executable.

A frame carries a list of messages. Commands go from client to node; the node answers each
command of a frame with one reply, in order, in one frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Ref:
    """Names an object in the receiving node's store (the ids are chosen by the client). A
    Call's positional arguments name objects more cheaply, by plain ids (see `Call.refs`)."""

    id: int


# ---- commands -------------------------------------------------------------------------------


@dataclass(slots=True)
class Put:
    """Store `value` under `id`."""

    id: int
    value: Any


@dataclass(slots=True)
class Call:
    """Call the allowlisted `op` on `args`/`kwargs` (which may hold Refs); store the result
    under `out` (None: discard it, as for in-place methods), or, when `out` lists ids, each
    item of the result (a tuple of exactly that many) under its id.

    `refs`: a bitmask of the positional arguments that are ids of stored objects (bit i:
    `args[i]`). Most arguments are such references, and a plain int costs neither side any
    Python to encode or decode, where a Ref costs a call into Python on each.

    `refs` is a speed trick (wire format 3). What it buys, timed on one tutorial frame when it
    landed: the client's encoding 10.6 -> 6.0 µs, the node's decoding 19.0 -> 12.3 µs
    (BENCHMARKS.md at 3341795, "Tenth session"). It is set by `tether.remote.pointer.
    remote_call` (and by the hook's optimizer calls, which name a mirror by id), and read on
    the node by `tether.node.node.object_id` and `Node._call`; nothing else interprets it.

    `state`: the thread-local torch state the call was issued in (grad mode, inference mode,
    default dtype), as the code `tether.wire.torchstate` defines (wire format 4); the node
    runs the call under it. 0: torch's default (grad on, float32)."""

    op: str
    args: list
    kwargs: dict
    out: int | list[int] | None
    refs: int = 0
    state: int = 0


@dataclass(slots=True)
class Get:
    """Send back the values stored under `ids` (as one list), if their policies let them leave.

    Where a policy asks for approval, this files a request carrying `name` and `reason`, and
    waits up to `wait` seconds for the owner's answer (0: do not wait)."""

    ids: list[int]
    name: str = ""
    reason: str = ""
    wait: float = 0.0


@dataclass(slots=True)
class Delete:
    """Forget these ids (the client dropped its last pointer to them)."""

    ids: list[int]


# ---- replies --------------------------------------------------------------------------------


@dataclass(slots=True)
class Done:
    """The command succeeded. `meta` describes the stored result: for a tensor
    `["tensor", shape, dtype, requires_grad]`, otherwise `[kind, type name, ...]`; None when
    nothing was stored (or the client frees it at once);
    for a Call with several outs, one such description (or None) per out."""

    meta: list | None = None


@dataclass(slots=True)
class Value:
    """The values a Get asked for, in its order."""

    value: Any


@dataclass(slots=True)
class Failure:
    """The command failed. `kind` names the error class, `message` says what happened."""

    kind: str
    message: str
    details: dict = field(default_factory=dict)


COMMANDS = (Put, Call, Get, Delete)
REPLIES = (Done, Value, Failure)
MESSAGE_TYPES: tuple[type, ...] = COMMANDS + REPLIES
