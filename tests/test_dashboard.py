"""The data owner's page (tether.dashboard) against a real owner: a Duet served over the
network, a scientist in a process of its own, and Debian's chromium driven by Playwright.

The scientist's request shows on the page within a second; a click on accept releases
exactly the value filed and the scientist's blocked `get` returns it; deny makes it give up
(None from `get(request_block=True)`, PermissionDeniedError from a plain blocking fetch); the
audit log on the page shows both. Nothing the scientist writes runs as markup. Without the
one-time token or the cookie it becomes, every path answers 403; accept and deny without the
CSRF token are refused. The page stays responsive while 1,000 requests arrive.

The browser tests skip only where /usr/bin/chromium is missing (`apt-get install chromium`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from conftest import wait_until
from test_duet import SECRET, Process, ServiceThread

from tether.dashboard import Dashboard
from tether.duet.session import start_duet
from tether.node import Node
from tether.node.policy import Release

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_browser = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"
)
SHOWN_WITHIN_MS = 1000
HOSTILE = (
    '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    "\"'><b>bold</b> & {{7*7}}"
)
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
SHOTS = os.environ.get("TETHER_DASHBOARD_SCREENSHOTS") == "1"  # write docs/images/dashboard-*

# The scientist: joins the duet and files requests, printing what comes back.
SCIENTIST = """
import sys
import tether as sy
from tether import errors
session, network, mode = sys.argv[1:4]
duet = sy.join_duet(session, network, timeout=60)
x = duet.store["secret"]
if mode == "decide":
    hostile = sys.argv[4]
    mean = x.mean()
    print("filed:", mean.request(name="mean", reason="the average, beside my synthetic data's"),
          flush=True)
    doubled = (x * 2)[0]
    value = doubled.get(request_block=True, name="first row, doubled",
                        reason="to check my scaling step on one row", timeout_secs=60)
    print("accepted:", value.tolist(), flush=True)
    total = x.sum()
    print("denied:", total.get(request_block=True, name="total", reason=hostile,
                              timeout_secs=60), flush=True)
    try:  # waits on the pending request for the mean
        duet.client.get([mean.id], delete=True, wait=60)
    except errors.PermissionDeniedError as exc:
        print("raised:", type(exc).__name__, flush=True)
else:
    count = int(mode)
    for i in range(count):
        (x + i).request(name=f"q{i}", reason=f"request {i} of {count}")
    print("filed:", count, flush=True)
duet.close()
"""


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    with ServiceThread() as service:
        yield service.url


@pytest.fixture
def owner(network):
    duet = start_duet(network, confirm=False)
    SECRET.send(duet, pointable=True, tags=["secret"], description="three private rows")
    duet.requests.add_handler(name="train_size", action="accept", max_elements=1, dtype=int)
    try:
        yield duet
    finally:
        duet.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _scientist(owner, network: str, *args: str) -> Process:
    return Process("-c", SCIENTIST, owner.session_id, network, *args)


def _open(browser, dashboard: Dashboard):
    """A fresh browser context on the dashboard's one-time link, with an observer that notes
    (by the browser's clock) when each request's row first appears."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.errors = []  # what the console reports (a script blocked by the CSP, say)
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(dashboard.url)
    page.wait_for_selector("#live.on")
    page.evaluate(
        """() => {
          window.__seen = {};
          const note = () => {
            const now = Date.now();
            for (const row of document.querySelectorAll("tr.request")) {
              const id = row.dataset.request;
              if (!(id in window.__seen)) window.__seen[id] = now - Number(row.dataset.filed);
            }
          };
          note();
          new MutationObserver(note).observe(document.getElementById("panel"),
                                              {childList: true, subtree: true});
        }"""
    )
    return context, page


def _shown_after_ms(page, request_id: int) -> int:
    """Milliseconds from the request's filing on the owner to its row on the page."""
    seen = "(id) => window.__seen[id]"
    page.wait_for_function(f"{seen} !== undefined", arg=str(request_id), timeout=10_000)
    return page.evaluate(seen, str(request_id))


def _screenshot(page, name: str) -> None:
    """Written here: Playwright's own file writing leaves a thread pool running."""
    (IMAGES / name).write_bytes(page.screenshot(full_page=True))


def _pending(owner, name: str, timeout: float = 60):
    wait_until(lambda: any(r.name == name for r in owner.requests.pending()), timeout)
    return next(r for r in owner.requests.pending() if r.name == name)


# ---- in the browser -------------------------------------------------------------------------


@needs_browser
def test_accept_and_deny_from_the_page(owner, network, browser):
    dashboard = owner.dashboard()
    context, page = _open(browser, dashboard)
    try:
        assert "token" not in page.url and urlsplit(page.url).path == "/"
        cookie = next(c for c in context.cookies() if c["name"].startswith("tether_dashboard"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
        scientist = _scientist(owner, network, "decide", HOSTILE)
        try:
            assert scientist.expect(r"filed: (\w+)") == "pending"
            first = _pending(owner, "first row, doubled")
            assert _shown_after_ms(page, first.id) < SHOWN_WITHIN_MS
            row = page.locator(f'tr.request[data-request="{first.id}"]')
            # what it would release: type, dtype, shape, size and where it came from
            what = row.locator("td.what").inner_text()
            assert "Tensor" in what and "float32" in what and "(2,)" in what
            assert "2 elements" in what and first.digest[:12] in what and "secret" in what
            assert "published" in row.locator("td.provenance").inner_text()
            assert row.locator("td.reason").inner_text() == first.reason
            if SHOTS:
                _screenshot(page, "dashboard-pending.png")
            row.locator("button.accept").click()
            line = scientist.expect(r"accepted: (.*)")
            assert json.loads(line) == (SECRET * 2)[0].tolist()  # exactly the value filed
            assert first.status == "accepted" and first.decided_by == "owner"

            total = _pending(owner, "total")
            row = page.locator(f'tr.request[data-request="{total.id}"]')
            assert row.locator("td.reason").inner_text() == HOSTILE  # shown, as text
            assert row.locator("td.reason *").count() == 0  # and not as markup
            assert page.evaluate("window.__pwned") is None
            row.locator("button.deny").click()
            assert scientist.expect(r"denied: (.*)") == "None"
            mean = _pending(owner, "mean")
            page.locator(f'tr.request[data-request="{mean.id}"] button.deny').click()
            assert scientist.expect(r"raised: (.*)") == "PermissionDeniedError"
            assert scientist.finish() == 0, scientist.output
        finally:
            scientist.proc.kill()
        for request, decision in ((first, "accepted"), (total, "denied"), (mean, "denied")):
            page.wait_for_selector(
                f'#audit tr.entry[data-request="{request.id}"][data-decision="{decision}"]'
            )
        assert page.locator("#pending tr.request").count() == 0
        assert [e["decision"] for e in owner.requests.audit] == ["accepted", "denied", "denied"]
        assert page.evaluate("window.__pwned") is None
        assert page.errors == []
        if SHOTS:
            owner.grant(owner.client_id, epsilon=2.0)
            page.wait_for_selector("#budgets progress")
            _screenshot(page, "dashboard-decided.png")
    finally:
        context.close()


@needs_browser
def test_the_page_keeps_up_with_a_thousand_requests(owner, network, browser):
    """1,000 requests from one scientist (its cap of pending requests raised for the test):
    the newest shows within a second of being filed, by the browser's clock."""
    count = 1000
    owner.requests.max_pending_per_client = count
    dashboard = owner.dashboard()
    context, page = _open(browser, dashboard)
    try:
        scientist = _scientist(owner, network, str(count))
        try:
            assert scientist.expect(r"filed: (\d+)", timeout=120) == str(count)
            assert scientist.finish() == 0, scientist.output
        finally:
            scientist.proc.kill()
        newest = owner.requests.pending()[-1]
        assert newest.name == f"q{count - 1}" and len(owner.requests) == count
        shown_after = _shown_after_ms(page, newest.id)
        during = sorted(page.evaluate("Object.values(window.__seen)"))
        print(
            f"newest shown {shown_after} ms after it was filed; while they arrived, "
            f"{len(during)} rows first showed after a median {during[len(during) // 2]} ms, "
            f"at most {during[-1]} ms"
        )
        assert shown_after < SHOWN_WITHIN_MS, f"the newest request showed after {shown_after} ms"
        assert during[len(during) // 2] < SHOWN_WITHIN_MS  # and the page kept up meanwhile
        page.wait_for_function(
            "(count) => document.getElementById('pending-count').textContent === count",
            arg=str(count),
        )
        # and the buttons still answer at once
        oldest = owner.requests.pending()[0]
        page.locator(f'tr.request[data-request="{newest.id}"] button.accept').click()
        page.wait_for_selector(f'#audit tr.entry[data-request="{newest.id}"]')
        assert newest.status == "accepted" and oldest.status == "pending"
    finally:
        context.close()


# ---- the security model, over plain HTTP ----------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Node, Dashboard]]:
    node = Node("alice", release=Release.STRICT)
    node.publish("rows", SECRET, tags=("#rows",), description="the rows")
    with Dashboard(node) as dashboard:
        yield node, dashboard


def _http(dashboard: Dashboard | Link, method: str, path: str, headers: dict | None = None):
    connection = http.client.HTTPConnection(dashboard.host, dashboard.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def _link(dashboard: Dashboard | Link) -> str:
    """The path and query of the one-time link."""
    return "/?" + urlsplit(dashboard.url).query


def _file(node: Node, name: str = "rows", reason: str = "why not"):
    return node.requests.submit("scientist-1", 7, name, reason, (), "", SECRET[0] * 3)


def _login(dashboard: Dashboard | Link) -> tuple[str, str]:
    """Redeem the one-time token: the session cookie, and the page's CSRF token."""
    status, headers, _ = _http(dashboard, "GET", _link(dashboard))
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags, cookie
    session = cookie.split(";")[0]
    status, _, body = _http(dashboard, "GET", "/", {"Cookie": session})
    assert status == 200
    return session, re.search(r'"X-CSRF-Token": "([^"]+)"', body).group(1)  # type: ignore[union-attr]


def test_without_the_token_or_its_cookie_every_path_is_403(served):
    node, dashboard = served
    request = _file(node)
    for path in (
        "/",
        "/panel",
        "/events",
        "/static/htmx.min.js",
        "/?token=guessed",
        "/?token=%C3%A9",
    ):
        assert _http(dashboard, "GET", path)[0] == 403, path
    assert _http(dashboard, "POST", f"/requests/{request.id}/accept")[0] == 403
    forged = f"tether_dashboard_{dashboard.port}=guessed"
    assert _http(dashboard, "GET", "/", {"Cookie": forged})[0] == 403
    session, _ = _login(dashboard)
    assert _http(dashboard, "GET", "/panel", {"Cookie": session})[0] == 200
    # the link works once: whoever loads it later (from the history, a log) is refused
    assert _http(dashboard, "GET", _link(dashboard))[0] == 403
    assert request.status == "pending"


def test_accept_and_deny_need_the_csrf_token(served):
    node, dashboard = served
    first, second = (
        _file(node, "a"),
        node.requests.submit("scientist-1", 8, "b", "", (), "", torch.ones(2)),
    )
    session, csrf = _login(dashboard)
    for headers in ({"Cookie": session}, {"Cookie": session, "X-CSRF-Token": "forged"}):
        status, _, body = _http(dashboard, "POST", f"/requests/{first.id}/accept", headers)
        assert status == 403 and "CSRF" in body
    assert first.status == "pending" and node.requests.audit == []
    both = {"Cookie": session, "X-CSRF-Token": csrf}
    assert _http(dashboard, "POST", f"/requests/{first.id}/accept", both)[0] == 200
    assert _http(dashboard, "POST", f"/requests/{second.id}/deny", both)[0] == 200
    assert (first.status, first.decided_by, second.status) == ("accepted", "owner", "denied")
    assert torch.equal(first.release(), SECRET[0] * 3)  # the owner's API released it
    assert _http(dashboard, "POST", f"/requests/{first.id}/deny", both)[0] == 409  # decided
    assert _http(dashboard, "POST", f"/requests/{first.id}/drop", both)[0] == 404


def test_what_the_scientist_writes_is_escaped(served):
    node, dashboard = served
    node.requests.submit("<i>client</i>", 9, HOSTILE, HOSTILE, ("<u>tag</u>",), "", 3)
    session, _ = _login(dashboard)
    status, headers, body = _http(dashboard, "GET", "/panel", {"Cookie": session})
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    for markup in ("<img", "<script", "<b>", "<i>", "<u>"):
        assert markup not in body
    assert "&lt;script&gt;window.__pwned=2&lt;/script&gt;" in body


def test_the_dashboard_binds_to_loopback_and_stops(served):
    _, dashboard = served
    assert dashboard.host == "127.0.0.1" and dashboard.url.startswith("http://127.0.0.1:")
    dashboard.close()
    with pytest.raises(OSError):
        _http(dashboard, "GET", "/")


# ---- from the command line ------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """Where a dashboard another process printed is served (what `_http` needs of one)."""

    host: str
    port: int
    url: str

    @classmethod
    def of(cls, url: str) -> Link:
        parts = urlsplit(url)
        return cls(str(parts.hostname), int(parts.port or 80), url)


@pytest.mark.parametrize("command", ["worker", "duet"])
def test_the_commands_serve_the_page(command, network):
    """`tether worker --dashboard` and `tether duet --dashboard` print a one-time link to a
    page on 127.0.0.1, and stop it with the command (Ctrl-C)."""
    args = {
        "worker": ("worker", "--id", "alice", "--port", "0", "--policy", "strict"),
        "duet": ("duet", "--network", network, "--no-confirm"),
    }[command]
    process = Process("-m", "tether", *args, "--dashboard")
    try:
        page = Link.of(process.expect(r"owner's dashboard \(open once, in your browser\): (\S+)"))
        assert page.host == "127.0.0.1"
        assert _http(page, "GET", "/")[0] == 403
        session, _ = _login(page)
        status, _, body = _http(page, "GET", "/", {"Cookie": session})
        assert status == 200 and ("worker alice" if command == "worker" else "duet-") in body
        process.proc.send_signal(signal.SIGINT)
        assert process.finish(30) == 130, process.output
        with pytest.raises(OSError):
            _http(page, "GET", "/")
    finally:
        process.proc.kill()
