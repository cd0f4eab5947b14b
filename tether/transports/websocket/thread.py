"""A WorkerServer on its own event loop in a background thread (tests, notebooks, a Duet's
owner). The one module that uses both ends of the websocket transport."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tether.transports.websocket.server import WorkerServer
from tether.transports.websocket.transport import WebsocketClientWorker, connect


class ServerThread:
    """A WorkerServer on its own event loop in a background thread, for tests and notebooks:
    `with ServerThread(WorkerServer(node, port=0)) as server: w = server.connect()`."""

    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name=f"tether-server-{server.node.name}"
        )

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.server.token

    def start(self) -> ServerThread:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        except BaseException:  # the port is taken, say: leave no loop running behind
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            raise
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def connect(self, **options: Any) -> WebsocketClientWorker:
        """A client worker connected to this server (host 127.0.0.1 when it listens on all)."""
        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "::", "") else self.server.host
        scheme = "wss" if self.server.ssl_context else "ws"
        return connect(f"{scheme}://{host}:{self.server.port}", token=self.token, **options)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
