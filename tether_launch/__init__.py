"""The `tether` console script's entry point. It lives outside the `tether` package because
importing any module of `tether` runs the package's own imports (torch among them, seconds)
before anything in it could catch a Ctrl-C: here, one line says so instead of a traceback."""

from __future__ import annotations

import sys

STOPPED = 130  # tether.cli.console.STOPPED, which cannot be imported before tether is


def main() -> int:
    """Import tether and run the command; Ctrl-C before the command runs (while importing,
    while reading the flags) ends with `tether: stopped` and status 130."""
    try:
        from tether.cli import main as run_command
        from tether.cli.console import exit_process

        status = run_command()
    except KeyboardInterrupt:
        print("tether: stopped", file=sys.stderr)
        return STOPPED
    exit_process(status)  # ends a stopped command at once (see there)
