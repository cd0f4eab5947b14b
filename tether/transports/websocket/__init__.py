"""Workers over the network: `tether worker` serves a Node on a websocket; `connect()` and
`WebsocketClientWorker` reach it with the same pointers as a VirtualWorker."""

from tether.transports.websocket.server import ServerLimits, WorkerServer, serve, server_ssl_context
from tether.transports.websocket.thread import ServerThread
from tether.transports.websocket.transport import (
    AccessDeniedError,
    WebsocketClientWorker,
    WebsocketTransport,
    connect,
)

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
