"""The op table, shared by both sides: which dotted paths resolve to which functions, the guards
that bound what a call may allocate, and the names of the ops the node serves itself.

The node resolves and guards calls with it; the scientist side asks it which names exist.
Features add their own ops with `register`, from above.
"""

from tether.ops.guards import Guard
from tether.ops.names import PUBLISHED, REQUEST
from tether.ops.table import ALLOWLIST, PATH_OF, Entry, OpState, register, resolve

__all__ = [
    "ALLOWLIST",
    "PATH_OF",
    "PUBLISHED",
    "REQUEST",
    "Entry",
    "Guard",
    "OpState",
    "register",
    "resolve",
]
