"""Duet: a data owner and a data scientist, with approval.

The owner runs `duet = sy.launch_duet()`, publishes data with
`obj.send(duet, pointable=True, tags=[...], description=...)` and answers requests on
`duet.requests`; the scientist runs `duet = sy.join_duet("<session id>")`, computes through
`duet.torch`, `duet.python` and `duet.store`, trains `sy.Module` models sent with
`model.send(duet)`, and gets results only through requests the owner accepts.
"""

from tether.duet.module import Module
from tether.duet.owner import OwnerDuet, OwnerStore
from tether.duet.scientist import (
    RemoteDataLoader,
    RemoteStore,
    RemoteTorch,
    ScientistDuet,
    StorePointer,
)
from tether.duet.session import (
    SessionError,
    SessionId,
    await_scientist,
    join_duet,
    launch_duet,
    start_duet,
)

__all__ = [
    "Module",
    "OwnerDuet",
    "OwnerStore",
    "RemoteDataLoader",
    "RemoteStore",
    "RemoteTorch",
    "ScientistDuet",
    "SessionError",
    "SessionId",
    "StorePointer",
    "await_scientist",
    "join_duet",
    "launch_duet",
    "start_duet",
]
