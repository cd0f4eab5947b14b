"""The owner's side: the Node that runs commands, its Store, and the allowlist."""

from tether.node.allowlist import ALLOWLIST
from tether.node.node import Limits, Node
from tether.node.requests import Request, Requests
from tether.node.store import Privacy, Store, Stored

__all__ = ["ALLOWLIST", "Limits", "Node", "Privacy", "Request", "Requests", "Store", "Stored"]
