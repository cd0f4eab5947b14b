"""The data owner's side of a Duet: what `sy.launch_duet()` returns.

The owner's data never leaves this process unless the owner (or a handler the owner added)
accepts a request for it: `duet.requests` is the desk where requests arrive, `duet.store`
what the owner published with `obj.send(duet, pointable=True, tags=[...], description=...)`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tether.duet import catalog
from tether.duet.budget import BUDGET, RELEASE
from tether.duet.names import CATALOG
from tether.duet.node import DuetNode
from tether.node import Requests
from tether.privacy.dp import Budgets, Grant
from tether.privacy.dp.ledger import Ledger
from tether.transports.websocket import ServerThread

if TYPE_CHECKING:
    from tether.dashboard import Dashboard

DEFAULT_DELTA = 1e-6  # a grant's δ unless the owner names one


class OwnerDuet:
    """A running Duet, seen from the owner's side; `close()` ends it. `dp_ledger`: the file
    that keeps what scientists spent of their privacy budgets (None: kept in memory)."""

    def __init__(
        self,
        node: DuetNode,
        server: ServerThread,
        session_id: str,
        dp_ledger: str | Path | Ledger | None = None,
    ) -> None:
        self.node = node
        self.server = server
        self.session_id = session_id
        self.budgets = Budgets(dp_ledger)
        node.bind(RELEASE, budgets=self.budgets)
        node.bind(BUDGET, budgets=self.budgets)
        self._entries: list[dict] = []
        self._closers: list[Callable[[], None]] = [server.stop, node.close]
        self._publish_catalog()

    @property
    def requests(self) -> Requests:
        """The scientist's requests: `print()` lists the pending ones with what each carries
        (type, dtype, size, digest, provenance: a copy taken when it was filed, which is what
        accepting releases); iterate them, `[i].accept()`, `.pandas`, `.audit` (the log).
        `.add_handler(name=..., action="accept", max_elements=1, dtype=int)` answers
        requests; the scientist chooses the name, so say what an accept handler takes."""
        return self.node.requests

    def grant(
        self,
        scientist: str | None = None,
        *,
        epsilon: float,
        delta: float = DEFAULT_DELTA,
        dataset: str | None = None,
        account: str | None = None,
    ) -> Grant:
        """Approve, once for all of them, the scientist's differentially private releases
        (`ptr.publish(...)`) until they have spent ε = `epsilon` at `delta`: each is charged,
        and one that would exceed it is refused. `scientist`: a client id (default: the
        confirmed scientist); `dataset`: an id or tag in the store (default: all published
        data, one budget); `account`: the name their spend is kept under (default: the
        client id; name one to carry a spend over to their next session). Granting again
        changes the limit; what was spent stays spent. `duet.budgets` shows every grant."""
        scientist = scientist or self.client_id
        if scientist is None:
            raise ValueError("no scientist has joined yet: name the client id to grant to")
        key = catalog.select(self._entries, dataset)["id"] if dataset is not None else None
        found = self.budgets.grant(scientist, epsilon, delta, dataset=key, account=account)
        self.node.requests.note(
            scientist,
            "privacy budget",
            f"ε ≤ {found.epsilon:g} at δ = {found.delta:g} on {key or 'all published data'}, "
            f"spent from {found.account}",
            "granted",
        )
        return found

    def dashboard(self, host: str = "127.0.0.1", port: int = 0) -> Dashboard:
        """Serve the owner's page (`tether.dashboard`; needs the `dashboard` extra) and print
        its one-time link: the pending requests with what each would release and accept /
        deny buttons (they call `request.accept()` / `.deny()`), the handlers, the audit log,
        what you published and the privacy budgets, updated live. It stops with the duet."""
        from tether.dashboard import Dashboard

        page = Dashboard(
            self.node,
            host=host,
            port=port,
            budgets=self.budgets.table,
            title=self.node.name,
        )
        self.add_closer(page.close)
        print(f"tether duet: the owner's dashboard (open once, in your browser): {page.url}")
        return page

    @property
    def store(self) -> OwnerStore:
        return OwnerStore(self)

    @property
    def client_id(self) -> str | None:
        """The confirmed scientist's client id."""
        return self.node.client_id

    def publish(
        self,
        obj: Any,
        pointable: bool = True,
        *,
        tags: list[str] | tuple[str, ...] = (),
        description: str = "",
    ) -> str:
        """Make `obj` reachable by the scientist through `duet.store` (by position, id or tag);
        they can compute on it but fetch nothing computed from it without a request. Returns
        its id. (`obj.send(duet, pointable=True, ...)` calls this.)"""
        if not pointable:
            raise ValueError(
                "pointable=False would publish an object the scientist can never "
                "reach: keep it local instead"
            )
        if not all(isinstance(t, str) for t in tags):
            raise TypeError("tags are strings")
        value = obj.detach() if isinstance(obj, torch.Tensor) else obj
        obj_id = secrets.token_hex(6)
        self.node.publish(obj_id, value, private=True, tags=tuple(tags), description=description)
        self._entries.append(catalog.entry(obj_id, tuple(tags), description))
        self._publish_catalog()
        return obj_id

    receive = publish  # what `obj.send(duet, ...)` calls (see tether.remote.hook.send_tensor)

    def wait(self, timeout: float | None = None) -> bool:
        """Keep serving until the scientist leaves (or `timeout` seconds pass); whether they
        left."""
        return self.node.left.wait(timeout)

    def close(self) -> None:
        """End the duet: the scientist is disconnected and nobody can join any more."""
        while self._closers:
            self._closers.pop()()

    def add_closer(self, close: Callable[[], None]) -> None:
        """Run `close` when the duet ends (before the server stops)."""
        self._closers.append(close)

    def _publish_catalog(self) -> None:
        self.node.publish(CATALOG, [dict(e) for e in self._entries], private=False)

    def __enter__(self) -> OwnerDuet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OwnerDuet {self.node.name} scientist={self.client_id}>"


class OwnerStore:
    """What the owner published: `.pandas`, `len()`, and `[position | id | tag]` gives the
    owner's own object back."""

    def __init__(self, duet: OwnerDuet) -> None:
        self._duet = duet

    @property
    def pandas(self) -> Any:
        return catalog.table(self._duet._entries)

    def __len__(self) -> int:
        return len(self._duet._entries)

    def __getitem__(self, key: int | str) -> Any:
        return self._duet.node.published[catalog.select(self._duet._entries, key)["id"]].value

    def __repr__(self) -> str:
        return repr(self.pandas)
