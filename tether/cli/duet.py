"""`tether duet`: start a Duet as the data owner from the shell (`tether duet --dataset mnist
--dashboard`), publish MNIST, and answer the scientist's requests in the browser."""

from __future__ import annotations

import argparse

from tether.cli.console import add_dashboard_flags, add_flag
from tether.datasets import MNIST
from tether.datasets.mnist import MEAN, STD
from tether.duet.session import DEFAULT_TIMEOUT, await_scientist, start_duet
from tether.transforms import Compose, Normalize, ToTensor

SUMMARY = "start a Duet as the data owner (answer requests in the browser with --dashboard)"
DESCRIPTION = """\
Start a Duet as the data owner: print the session id the scientist joins with
(sy.join_duet(id)), publish the data, and serve until the scientist leaves or Ctrl-C.
Nothing computed from the data leaves without a request you accept.

With --dashboard, a page on 127.0.0.1 shows the pending requests with what each would
release, accept / deny buttons, the audit log and what is published; open the printed link
once, in your browser (its token becomes a cookie). Without it, nobody answers requests here:
use sy.launch_duet() in Python (duet.requests[0].accept()) instead."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `tether duet`."""
    add_flag(
        p, "--network", help="the tether network service (default $TETHER_NETWORK, else local)"
    )
    add_flag(
        p,
        "--loopback",
        action="store_true",
        help="meet the scientist on this machine (sy.join_duet(loopback=True)), no service",
    )
    add_flag(p, "--host", default="127.0.0.1", help="where the owner's worker listens")
    add_flag(p, "--port", type=int, default=0, help="its port (default 0: any free one)")
    add_flag(
        p,
        "--dataset",
        choices=["mnist"],
        help="publish MNIST's training set (the sample shipped with tether, or --data-root)",
    )
    add_flag(p, "--data-root", help="folder with the MNIST IDX files")
    add_flag(
        p,
        "--no-confirm",
        action="store_true",
        help="let the first scientist in without asking for their client id",
    )
    add_flag(
        p,
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the scientist to join (default {DEFAULT_TIMEOUT:g})",
    )
    add_dashboard_flags(p, help="serve the owner's page")


def main(args: argparse.Namespace) -> int:
    """Serve the duet until the scientist leaves (0) or Ctrl-C (see tether.cli.main)."""
    confirm = not args.no_confirm and not args.loopback
    duet = start_duet(
        args.network,
        loopback=args.loopback,
        confirm=confirm,
        host=args.host,
        port=args.port,
    )
    with duet:
        if args.dataset or args.data_root:
            train = MNIST(
                root=args.data_root,
                train=True,
                transform=Compose([ToTensor(), Normalize((MEAN,), (STD,))]),
            )
            duet.publish(
                train,
                pointable=True,
                tags=["mnist-train"],
                description="MNIST training images (1x28x28, normalized) and labels",
            )
        if args.dashboard:
            duet.dashboard(host=args.dashboard_host, port=args.dashboard_port)
        await_scientist(duet, confirm, args.timeout)
        duet.wait()
        print("tether duet: the scientist left", flush=True)
    return 0
