"""What the owner's page shows, read from the node as plain rows (strings and numbers): the
pending requests with what each would release, the handlers in force, the privacy budgets,
the published objects and the audit log. The page's template renders these rows and escapes
every value; nothing here is HTML."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tether.node import Node
from tether.node.requests import Handler, Request
from tether.node.store import Stored

SHOWN = 50  # pending requests and audit entries on the page at once (the newest)
INTERNAL = "tether."  # published keys of tether's own (the Duet catalog), not the owner's data


@dataclass(frozen=True)
class View:
    """One rendering's worth of rows; `pending_total` counts the pending requests not shown."""

    node: str
    pending: list[dict[str, Any]]
    pending_total: int
    handlers: list[dict[str, Any]]
    budgets: list[dict[str, Any]]
    published: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    audit_total: int


def read(node: Node, budgets: Callable[[], list[dict[str, Any]]] | None = None) -> View:
    """The rows of the page, newest first, at most SHOWN of the pending requests and of the
    audit log."""
    desk = node.requests
    pending = desk.pending()
    audit = list(desk.audit)
    return View(
        node=node.name,
        pending=[_request(r) for r in reversed(pending[-SHOWN:])],
        pending_total=len(pending),
        handlers=[_handler(h) for h in desk.handlers],
        budgets=[_budget(row) for row in budgets()] if budgets is not None else [],
        published=[
            _published(key, stored)
            for key, stored in list(node.published.items())
            if not key.startswith(INTERNAL)
        ],
        audit=[_audit(e) for e in reversed(audit[-SHOWN:])],
        audit_total=len(audit),
    )


def _request(r: Request) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "client": r.client,
        "reason": r.reason,
        "type": r.kind,
        "dtype": r.dtype,
        "shape": r.shape,
        "elements": r.elements,
        "digest": r.digest[:12],
        "provenance": r.provenance or "unknown",
        "tags": ", ".join(r.tags),
        "description": r.description,
        "filed": _clock(r.time),
        "filed_ms": int(r.time * 1000),
    }


def _handler(h: Handler) -> dict[str, Any]:
    constraints = []
    if h.max_elements is not None:
        constraints.append(f"at most {h.max_elements} element{'s' * (h.max_elements != 1)}")
    if h.dtype is not None:
        constraints.append(f"dtype {getattr(h.dtype, '__name__', str(h.dtype))}")
    if isinstance(h.provenance, str):
        constraints.append(f"provenance {h.provenance!r}")
    elif h.provenance is not None:
        constraints.append("provenance checked by a function")
    if h.predicate is not None:
        constraints.append("a predicate on the value")
    expires = "never" if h.timeout_secs < 0 else _clock(h.added + h.timeout_secs)
    expired = 0 <= h.timeout_secs < time.time() - h.added
    return {
        "action": h.action,
        "name": h.name if h.name is not None else "any name",
        "tags": ", ".join(h.tags) or "any tags",
        "constraints": "; ".join(constraints)
        or ("none: it accepts any value under this name" if h.action == "accept" else "none"),
        "unconstrained_accept": h.action == "accept" and not h.constrained,
        "expires": "expired" if expired else expires,
    }


def _budget(row: dict[str, Any]) -> dict[str, Any]:
    epsilon, spent = float(row["epsilon"]), float(row["spent"])
    return {
        "scientist": str(row["scientist"]),
        "dataset": str(row["dataset"]),
        "account": str(row["account"]),
        "epsilon": f"{epsilon:.4g}",
        "delta": f"{float(row['delta']):.0e}",
        "spent": f"{spent:.4g}",
        "remaining": f"{float(row['remaining']):.4g}",
        "releases": int(row.get("releases", 0)),
        "percent": min(100, round(100 * spent / epsilon)) if epsilon > 0 else 100,
    }


def _published(key: str, stored: Stored) -> dict[str, Any]:
    return {
        "key": key,
        "privacy": stored.privacy.name.lower(),
        "tags": ", ".join(stored.tags),
        "description": stored.description,
        "what": _describe(stored.value),
    }


def _describe(value: Any) -> str:
    """A value's type and size as the owner reads it (the owner's own data: sizes shown)."""
    if isinstance(value, torch.Tensor):
        return f"Tensor {str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    if isinstance(value, list | tuple):
        parts = ", ".join(_describe(v) for v in value[:4])
        more = ", …" if len(value) > 4 else ""
        return f"{type(value).__name__} of {len(value)}: {parts}{more}"
    if isinstance(value, dict):
        return f"dict of {len(value)}"
    return type(value).__name__


def _audit(entry: dict[str, Any]) -> dict[str, Any]:
    what = " ".join(str(entry[k]) for k in ("type", "dtype", "shape") if entry.get(k))
    return {
        "time": _clock(entry["time"]),
        "request": entry.get("request") if entry.get("request") is not None else "",
        "client": entry.get("client", ""),
        "name": entry.get("name", ""),
        "reason": entry.get("reason", ""),
        "what": what,
        "digest": str(entry.get("digest", ""))[:12],
        "decision": entry["decision"],
        "by": entry.get("by", ""),
    }


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))
