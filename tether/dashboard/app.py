"""The owner's page as a Starlette app: who may load it, what it serves, how it stays live.

- Access: the URL printed at start carries a one-time token. Its first load trades it for a
  session cookie (HttpOnly, SameSite=Strict, Path=/, named after the port) and redirects to
  `/`, so the token leaves the address bar and the history; a second load of that URL is
  refused. Every other path needs the cookie: without it, 403.
- Changes: accept and deny are POSTs that carry the session's CSRF token in a header (htmx
  sends it from the page's `hx-headers`); without it, or with another, 403. They call the
  same `Request.accept()` / `.deny()` the owner types in Python.
- Live: `/events` is a server-sent event stream; the desk's watcher (`Requests.watch`) wakes
  it when a request arrives or changes, and the page then fetches `/panel` (at most one fetch
  at a time; a change during one fetches once more after it). No polling.
- Everything the scientist chose (names, reasons, client ids) reaches the page through the
  template's autoescaping, and a Content-Security-Policy allows only this server's scripts.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tether.dashboard.view import read
from tether.node import Node

HERE = Path(__file__).resolve().parent
# Named after the port: cookies do not tell ports apart, so two dashboards on one host would
# otherwise overwrite each other's.
COOKIE = "tether_dashboard_{port}"
CSRF_HEADER = "X-CSRF-Token"
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies close silent ones)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Changes:
    """A change counter that wakes every open event stream. `changed()` may be called from
    any thread (the desk's watcher runs in the node's); the streams run on the server's loop."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def changed(self) -> None:
        with self._lock:
            self.version += 1
            loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notify)

    def close(self) -> None:
        self.closed = True
        self.changed()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = asyncio.Event()

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: one `changed` event now, and one after each burst of changes."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
        if self._wake is None:
            self._wake = asyncio.Event()
        seen = -1
        while not self.closed:
            if self.version != seen:
                seen = self.version
                yield f"event: changed\ndata: {seen}\n\n"
                continue
            wake = self._wake
            try:
                await asyncio.wait_for(wake.wait(), KEEPALIVE)
            except TimeoutError:
                yield ": keepalive\n\n"


class Access:
    """The one-time token and the session it becomes (one browser session per dashboard), for
    the dashboard on `port`."""

    def __init__(self, port: int) -> None:
        self.cookie = COOKIE.format(port=port)
        self.token: str | None = secrets.token_urlsafe(32)
        self.session: str | None = None
        self.csrf = secrets.token_urlsafe(32)
        self._lock = threading.Lock()

    def redeem(self, token: str) -> str | None:
        """The new session's cookie value if `token` is the unused one-time token."""
        with self._lock:
            if self.token is None or not _same(token, self.token):
                return None
            self.token = None
            self.session = secrets.token_urlsafe(32)
            return self.session

    def admits(self, request: HttpRequest) -> bool:
        cookie = request.cookies.get(self.cookie, "")
        return self.session is not None and _same(cookie, self.session)

    def allows_change(self, request: HttpRequest) -> bool:
        return self.admits(request) and _same(request.headers.get(CSRF_HEADER, ""), self.csrf)


def _same(given: str, secret: str) -> bool:
    """A comparison in constant time that takes any text a client sends (non-ASCII too)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), secret.encode())


def build_app(
    node: Node,
    access: Access,
    changes: Changes,
    budgets: Callable[[], list[dict[str, Any]]] | None = None,
    title: str = "",
) -> Starlette:
    """The Starlette app of the owner's page for `node` (its requests desk, handlers, audit
    log and published objects) and `budgets` (rows of `Budgets.table()`, if it grants any)."""
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    static = StaticFiles(directory=HERE / "static")
    heading = title or f"node {node.name}"

    def render(template: str, **extra: Any) -> str:
        return templates.get_template(template).render(
            view=read(node, budgets), heading=heading, csrf=access.csrf, **extra
        )

    def refused(why: str = "forbidden") -> Response:
        return PlainTextResponse(why, status_code=403, headers=SECURITY_HEADERS)

    async def page(request: HttpRequest) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            session = access.redeem(token)
            if session is None:
                return refused("this link was used already, or is not this dashboard's")
            response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
            response.set_cookie(access.cookie, session, httponly=True, samesite="strict", path="/")
            return response
        if not access.admits(request):
            return refused()
        return HTMLResponse(render("page.html"), headers=SECURITY_HEADERS)

    async def panel(request: HttpRequest) -> Response:
        if not access.admits(request):
            return refused()
        return HTMLResponse(render("panel.html"), headers=SECURITY_HEADERS)

    async def events(request: HttpRequest) -> Response:
        if not access.admits(request):
            return refused()
        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(changes.stream(), media_type="text/event-stream", headers=headers)

    async def decide(request: HttpRequest) -> Response:
        if not access.allows_change(request):
            return refused("missing or wrong CSRF token")
        number, action = request.path_params["number"], request.path_params["action"]
        if action not in ("accept", "deny"):
            return PlainTextResponse("no such action", status_code=404, headers=SECURITY_HEADERS)
        found = next((r for r in node.requests.pending() if r.id == number), None)
        if found is None:
            return PlainTextResponse(
                f"request {number} is not pending", status_code=409, headers=SECURITY_HEADERS
            )
        try:
            found.accept() if action == "accept" else found.deny()
        except ValueError as exc:  # answered meanwhile (by a handler, or in Python)
            return PlainTextResponse(str(exc), status_code=409, headers=SECURITY_HEADERS)
        return HTMLResponse(render("panel.html"), headers=SECURITY_HEADERS)

    async def assets(scope: Any, receive: Any, send: Any) -> None:
        if not access.admits(HttpRequest(scope)):
            await refused()(scope, receive, send)
            return
        await static(scope, receive, send)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/panel", panel),
            Route("/events", events),
            Route("/requests/{number:int}/{action:str}", decide, methods=["POST"]),
            Mount("/static", app=assets),
        ]
    )
