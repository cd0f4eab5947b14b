"""What every `tether` command shares: one flag style (kebab-case, with the PySyft tutorials'
underscore spellings accepted and kept out of the help), one log format, and one way of
stopping on Ctrl-C (a line saying so, never a traceback)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from tether.federated.coordinator import Coordinator, FederationResult

STOPPED = 130  # the exit status of a command Ctrl-C ended (128 + SIGINT), as shells report it


class Stopped(KeyboardInterrupt):
    """Ctrl-C during a federated run; `where` says what the run left (its checkpoint), or ""."""

    def __init__(self, where: str = "") -> None:
        super().__init__(where)
        self.where = where


def exit_process(status: int) -> NoReturn:
    """End the `tether` process with `status`. After Ctrl-C (STOPPED) it ends at once, without
    the interpreter's teardown: a round's worker thread may still be inside torch, and tearing
    it down then aborts the process ("terminate called without an active exception", status
    -6) after the stop line was printed. Everything worth keeping is on disk by then."""
    if status == STOPPED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def interrupted(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind `exc`: itself, or one it was raised while handling (cleanup that failed
    half-way through an interrupted write); None when there was none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def stopped_line(command: str, exc: BaseException | None = None) -> str:
    """`tether train: stopped; checkpoint at DIR after round 5 of 40 (...)` or `...: stopped`."""
    where = exc.where if isinstance(exc, Stopped) else ""
    return f"tether {command}: stopped" + (f"; {where}" if where else "")


def run_federation(coordinator: Coordinator, resume: str = "") -> FederationResult:
    """`coordinator.run()`, where Ctrl-C raises Stopped naming the checkpoint it left;
    `resume`: how the user continues from it (e.g. "continue with --resume")."""
    try:
        return coordinator.run()
    except KeyboardInterrupt:
        saved = coordinator.checkpointed_round()
        if saved is None:
            raise Stopped() from None
        where = f"checkpoint at {coordinator.checkpoint_dir} after round {saved} of "
        where += f"{coordinator.rounds}" + (f" ({resume})" if resume else "")
        raise Stopped(where) from None


# ---- flags ------------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag by its main spelling; its aliases (`add_flag`) are accepted, not listed."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        aliases = getattr(action, "aliases", ())
        if not aliases:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = [s for s in action.option_strings if s not in aliases]
        return super()._format_action_invocation(shown)


class RawHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """HelpFormatter keeping the description's line breaks."""


def aliases_note(example: str) -> str:
    """The help's line on the underscore spellings, with one of the command's flags."""
    return (
        "Flags may also be spelled with underscores, as in the PySyft tutorials\n"
        f"({example.replace('-', '_').replace('__', '--', 1)} for {example})."
    )


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    *aliases: str,
    **options: Any,
) -> argparse.Action:
    """`--name` (kebab-case), also accepted as `--name_with_underscores` and as `aliases`,
    which the help leaves out."""
    spellings = [name, *aliases]
    spellings += ["--" + flag[2:].replace("-", "_") for flag in spellings]
    spellings = list(dict.fromkeys(spellings))  # in order, each once
    action = parser.add_argument(*spellings, **options)
    action.aliases = tuple(spellings[1:])  # type: ignore[attr-defined]
    return action


def add_dashboard_flags(parser: argparse.ArgumentParser, help: str) -> None:
    """`--dashboard` (whose `help` says what the page is for here) and where it is served:
    one spelling for `tether worker` and `tether duet`."""
    page = parser.add_argument_group("dashboard")
    add_flag(page, "--dashboard", action="store_true", help=help)
    add_flag(
        page,
        "--dashboard-host",
        default="127.0.0.1",
        help="address of the page (default 127.0.0.1: this machine only)",
    )
    add_flag(page, "--dashboard-port", type=int, default=0, help="its port (default: any free)")


# ---- logs -------------------------------------------------------------------------------------


class _PrintedOnStdout(logging.Filter):
    """Drops the "listening on" record: the command prints that line on stdout (where scripts
    and tests wait for it), and the log would say it a second time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "listening on" not in str(record.msg)


def setup_logging(quiet: bool) -> None:
    """Timestamped log lines on stderr: INFO and up, or only warnings when `quiet` (unless
    logging was set up already, as when a program runs a command in its own process)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(_PrintedOnStdout())
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler])


# ---- servers ----------------------------------------------------------------------------------


def serve(
    start: Callable[[], Awaitable[Any]],
    stop: Callable[[], Awaitable[Any]],
    ready: Callable[[], None],
    fast_loop: bool = False,
) -> int:
    """Run a server in this thread until SIGINT or SIGTERM, then stop it gracefully; the
    command's exit status: STOPPED after Ctrl-C (SIGINT), 0 after SIGTERM (a service's normal
    end). `ready` (which prints "listening on") runs once Ctrl-C stops the server rather than
    interrupting it, so a script that sends SIGINT on seeing that line always gets a clean
    stop. `fast_loop`: uvloop where installed (pipelined ops measured ~2x faster)."""
    received: list[int] = []

    async def main() -> None:
        await start()
        stopping = asyncio.Event()

        def on_signal(sig: int) -> None:
            received.append(sig)
            stopping.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        ready()
        await stopping.wait()
        await stop()

    run: Callable[[Any], Any] = asyncio.run
    if fast_loop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            run = uvloop.run
    run(main())
    return STOPPED if received[:1] == [signal.SIGINT] else 0
