"""`tether network`: the rendezvous service where Duet owners and scientists meet (and are
relayed). How it works, and what it can and cannot see, is tether.duet.rendezvous's docstring."""

from __future__ import annotations

import argparse
import logging
import sys

from tether.cli.console import STOPPED, add_flag, serve, setup_logging, stopped_line
from tether.duet.rendezvous import DEFAULT_PORT, Rendezvous

SUMMARY = "where Duet owners and scientists meet (and are relayed)"
DESCRIPTION = f"""\
Run the service where a Duet's data owner and data scientist find each other.

The owner's launch_duet(network_url=...) registers its session here; the scientist's
join_duet(session_id, network_url=...) looks it up with the session id the owner printed, and
connects to the owner directly or, when the owner is behind a NAT or firewall, through this
service, which then relays the connection. Knowing the service's address is not enough to
look a session up. What it relays it could read (the session's secret included) unless the
owner serves wss://: use a service you run or trust. Anyone who can reach its port can
register a session, so run it where your owners and scientists can reach it.

  tether network --host 0.0.0.0 --port {DEFAULT_PORT}

It serves until Ctrl-C (exit status 130) or SIGTERM (0)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `tether network`."""
    add_flag(
        parser,
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface; default 127.0.0.1)",
    )
    add_flag(
        parser,
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (0: any free one; default {DEFAULT_PORT})",
    )
    add_flag(parser, "--quiet", action="store_true", help="log only warnings")


def main(args: argparse.Namespace) -> int:
    """Run the service until SIGINT or SIGTERM; the exit status (see `console.serve`)."""
    setup_logging(args.quiet)
    service = Rendezvous(args.host, args.port)

    def ready() -> None:
        print(f"tether network listening on {service.url}", flush=True)

    status = serve(service.start, service.stop, ready)
    logging.getLogger(__name__).info("tether network stopped")
    if status == STOPPED:
        print(stopped_line("network"), file=sys.stderr, flush=True)
    return status
