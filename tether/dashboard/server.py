"""Serving the owner's page: uvicorn on a thread of its own, bound to 127.0.0.1 by default."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from tether.dashboard.app import Access, Changes, build_app
from tether.node import Node

START_TIMEOUT = 10.0


class Dashboard:
    """The owner's page for `node`, served at `url` until `close()`. `url` holds the one-time
    token: open it once, in the owner's browser; the page then needs the cookie it set.
    `budgets`: rows of the privacy budgets granted (`Budgets.table`), if any. Binding `host`
    to anything but a loopback address shows the page (and its buttons) to the network,
    guarded by the token alone: keep the default unless you must."""

    def __init__(
        self,
        node: Node,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        budgets: Callable[[], list[dict[str, Any]]] | None = None,
        title: str = "",
    ) -> None:
        self.node = node
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = host, self._socket.getsockname()[1]
        self._access = Access(self.port)
        self._changes = Changes()
        self._stop_watching = node.requests.watch(self._changes.changed)
        app = build_app(node, self._access, self._changes, budgets, title)
        where = f"[{host}]" if ":" in host else host
        self.url = f"http://{where}:{self.port}/?token={self._access.token}"  # the one-time link
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._socket])),
            name=f"dashboard {node.name}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the dashboard did not start on {host}:{port}")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop serving (open pages lose their live updates)."""
        self._stop_watching()
        self._changes.close()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Dashboard of {self.node.name} on http://{self.host}:{self.port}>"
