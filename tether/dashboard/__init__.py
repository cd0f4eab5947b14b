"""The data owner's page in a browser: pending requests with what each would release and
accept / deny buttons, the handlers in force, the audit log, the published objects and the
privacy budgets spent, updated live. `Dashboard(node)` serves it on 127.0.0.1; `tether duet
--dashboard`, `duet.dashboard()` and `tether worker --dashboard` start one. Needs the
`dashboard` extra (Starlette, uvicorn); the page's one script library, htmx, is vendored in
`static/` (nothing is loaded from elsewhere). The security model is in `app`'s docstring."""

from tether.dashboard.server import Dashboard

__all__ = ["Dashboard"]
