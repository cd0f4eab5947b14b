"""The owner's side: the Node that runs commands, its Store, requests and release policy."""

from tether.node.node import Limits, Node
from tether.node.policy import Release
from tether.node.requests import Request, Requests
from tether.node.store import Privacy, Store, Stored

__all__ = ["Limits", "Node", "Privacy", "Release", "Request", "Requests", "Store", "Stored"]
