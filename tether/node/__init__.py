"""The owner's side: the Node that runs commands, its Store, requests and release policy."""

from tether.node.node import Caller, Limits, Node
from tether.node.policy import Release
from tether.node.requests import Approved, Request, Requests
from tether.node.store import Privacy, Store, Stored

__all__ = [
    "Approved",
    "Caller",
    "Limits",
    "Node",
    "Privacy",
    "Release",
    "Request",
    "Requests",
    "Store",
    "Stored",
]
