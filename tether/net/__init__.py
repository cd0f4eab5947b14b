"""Workers over the network: `tether worker` serves a Node on a websocket; `connect()` and
`WebsocketClientWorker` reach it with the same pointers as a VirtualWorker."""

from tether.net.client import AccessDeniedError, WebsocketClientWorker, WebsocketTransport, connect
from tether.net.server import ServerLimits, ServerThread, WorkerServer, serve, server_ssl_context

__all__ = [
    "AccessDeniedError",
    "ServerLimits",
    "ServerThread",
    "WebsocketClientWorker",
    "WebsocketTransport",
    "WorkerServer",
    "connect",
    "serve",
    "server_ssl_context",
]
