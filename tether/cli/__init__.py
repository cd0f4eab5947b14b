"""The `tether` command, one module per subcommand: `worker` serves a worker (`tether worker
--id alice --port 8777 --dataset mnist --labels 0-3`); `duet` starts a Duet as the data owner;
`train`, `network` and `demo` run the federated jobs; `simulate` simulates many clients in one
process. Each subcommand module has SUMMARY, DESCRIPTION, `add_arguments(parser)` and
`main(args)`; `console` holds what they share (flag spellings, logs, Ctrl-C)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from tether.cli import demo, duet, network, simulate, train, worker
from tether.cli.console import STOPPED, HelpFormatter, RawHelpFormatter, interrupted, stopped_line
from tether.cli.version import __version__
from tether.errors import DatasetError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tether` console script (and `python -m tether`, `-m tether.cli`).
    Ctrl-C ends a command with one line saying so (and where its checkpoint is) and status 130,
    not a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"tether {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:
        stop = interrupted(exc)
        if stop is None:
            raise
        print(stopped_line(args.command, stop), file=sys.stderr)
        return STOPPED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether",
        description="Privacy-preserving machine learning on PyTorch: train on data you cannot see.",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register(commands, "worker", worker, raw=False)
    _register(commands, "duet", duet)
    _register(commands, "train", train)
    _register(commands, "demo", demo)
    _register(commands, "network", network)
    _register(commands, "simulate", simulate)
    return parser


def _register(
    commands: argparse._SubParsersAction, name: str, module: ModuleType, raw: bool = True
) -> None:
    """A subcommand from its module's SUMMARY, DESCRIPTION, `add_arguments` and `main`."""
    parser = commands.add_parser(
        name,
        help=module.SUMMARY,
        description=module.DESCRIPTION,
        formatter_class=RawHelpFormatter if raw else HelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(handler=module.main)
