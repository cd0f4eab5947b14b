"""`tether network`: the rendezvous service where Duet owners and scientists meet (and are
relayed). Its help text is the service's docstring (DESCRIPTION)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tether.duet import rendezvous
from tether.duet.rendezvous import DEFAULT_PORT, Rendezvous

SUMMARY = "where Duet owners and scientists meet (and are relayed)"
DESCRIPTION = rendezvous.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `tether network`."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (0: any free one; default {DEFAULT_PORT})",
    )
    parser.add_argument("--quiet", action="store_true", help="log only warnings")


def main(args: argparse.Namespace) -> int:
    """Run the service until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_serve(Rendezvous(args.host, args.port)))
    return 0


async def _serve(service: Rendezvous) -> None:
    await service.start()
    print(f"tether network listening on {service.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await service.stop()
