"""`tether worker`: serve a worker that others reach over a websocket (`tether worker --id alice
--port 8777 --dataset mnist --labels 0-3`), publishing its MNIST part privately."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

import torch

from tether.cli.console import (
    STOPPED,
    add_dashboard_flags,
    add_flag,
    aliases_note,
    serve,
    setup_logging,
    stopped_line,
)
from tether.datasets import MNIST, materialize
from tether.datasets.mnist import MEAN, STD
from tether.errors import DatasetError
from tether.federated.data.partition import parse_label_range, parse_spec
from tether.federated.delegated import enforce_dp
from tether.node import Limits, Node
from tether.node.policy import OPEN_WARNING, Release
from tether.privacy.dp import OwnerDP
from tether.privacy.dp.owner import DEFAULT_DELTA
from tether.transforms import Compose, Normalize, ToTensor
from tether.transports.websocket import ServerLimits, WorkerServer, server_ssl_context

SUMMARY = "serve a worker that others reach over a websocket"
DESCRIPTION = (
    "Serve a worker: clients connect with "
    "tether.connect('ws://HOST:PORT', token=...) and compute on its data "
    "through pointers; private data never leaves. Which results computed from it may leave "
    "is the release policy's choice (--policy): 'training' (the default) releases only the results "
    "of the worker's routines (delegated fit and evaluate), 'strict' nothing without an "
    "accepted request, 'open' anything derived (only where the scientist may see the data). "
    "It serves until Ctrl-C (exit status 130) or SIGTERM (0). " + aliases_note("--data-root")
)
POLICY_HELP = (
    "release policy: what computed from the private data may leave. "
    "training (default): only what the worker's routines return (delegated fit/evaluate: "
    "weights and metrics); pointer computations on the data give pointers that never leave. "
    "strict: nothing computed from the data leaves (requests wait for an owner who does not "
    "answer here). open: anything computed from the data leaves, e.g. (data * 1).get() "
    "returns it; prints a warning; use only where the scientist may see the data"
)
_MB = 2**20
# The data flags (their argparse names): any of them without --dataset means --dataset mnist.
_DATA_FLAGS = ("data_root", "testing", "labels", "partition", "samples")
# The dataset's advice, written for Python callers, as a `tether worker` user follows it.
_CLI_ADVICE = {
    "Pass download=True to fetch it, or root=None to use the sample embedded in tether.": (
        "Put the MNIST files in --data-root (torchvision's MNIST/raw layout works), or leave "
        "--data-root out to serve the sample shipped with tether."
    ),
    "delete it and download it again (download=True)": (
        "replace it with a good copy, or leave --data-root out to serve the sample shipped "
        "with tether"
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `tether worker`."""
    add_flag(p, "--id", default="worker", help="the worker's name (default: worker)")
    add_flag(
        p,
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface; default 127.0.0.1)",
    )
    add_flag(p, "--port", type=int, default=8777, help="port (0: any free one; default 8777)")
    add_flag(
        p,
        "--token",
        default=os.environ.get("TETHER_TOKEN"),
        help="access token clients must give (default: $TETHER_TOKEN, else a "
        "generated one, printed at start)",
    )
    add_flag(
        p,
        "--policy",
        choices=[r.value for r in Release],
        default=Release.TRAINING.value,
        help=POLICY_HELP,
    )
    add_flag(p, "--certfile", help="TLS certificate chain (PEM): serve wss://")
    add_flag(p, "--keyfile", help="TLS private key (PEM), if not in --certfile")
    data = p.add_argument_group("data")
    add_flag(
        data,
        "--dataset",
        choices=["mnist"],
        help="dataset to publish (private); the other data flags imply mnist",
    )
    add_flag(
        data,
        "--testing",
        action="store_true",
        default=None,
        help="publish the test set (key mnist_testing) instead of the train set",
    )
    add_flag(
        data,
        "--data-root",
        help="folder with the MNIST IDX files (torchvision layout "
        "works); default: the sample shipped with tether",
    )
    keep = data.add_mutually_exclusive_group()
    add_flag(keep, "--labels", help="keep only these digits, e.g. 0-3 or 0,2,5")
    add_flag(
        keep,
        "--partition",
        help="keep one part of a split: iid:N, labels:0-3/4-6/7-9, "
        "dirichlet:N:ALPHA or shards:N:K (with --part)",
    )
    add_flag(data, "--part", type=int, default=0, help="which part of --partition (default 0)")
    add_flag(data, "--seed", type=int, default=0, help="seed of --partition (default 0)")
    add_flag(
        data,
        "--samples",
        type=int,
        help="keep only the first N of the samples kept (default: all)",
    )
    limits = p.add_argument_group("limits")
    add_flag(
        limits,
        "--max-message-mb",
        type=float,
        default=512,
        help="largest message a client may send (default 512)",
    )
    add_flag(
        limits,
        "--max-stored-mb",
        type=float,
        default=8192,
        help="MB one client may keep on the worker: tensors, Python objects (default 8192)",
    )
    add_flag(
        limits,
        "--max-objects",
        type=int,
        default=100_000,
        help="objects one client may keep on the worker at once (default 100000)",
    )
    add_flag(
        limits,
        "--idle-timeout",
        type=float,
        default=3600,
        help="seconds of silence before a client is disconnected and its "
        "objects freed (default 3600)",
    )
    add_flag(
        limits,
        "--max-connections",
        type=int,
        default=64,
        help="clients served at once; more are refused until one leaves (default 64)",
    )
    add_flag(
        limits,
        "--max-handshakes",
        type=int,
        default=256,
        help="connections that have not yet shown a token, at once; more are "
        "closed at once (default 256)",
    )
    dp = p.add_argument_group(
        "differential privacy",
        "Every delegated fit trains with DP-SGD at least this private, and is refused once it "
        "would spend more than --max-epsilon on a dataset (across rounds, clients and "
        "restarts). Give --dp-noise, --dp-clip and --max-epsilon together.",
    )
    add_flag(dp, "--dp-noise", type=float, metavar="SIGMA", help="lowest noise multiplier")
    add_flag(dp, "--dp-clip", type=float, metavar="C", help="largest per-sample clipping norm")
    add_flag(dp, "--max-epsilon", type=float, metavar="EPS", help="ε budget per dataset")
    add_flag(
        dp, "--delta", type=float, default=DEFAULT_DELTA, help="δ of the budget (default 1e-5)"
    )
    add_flag(
        dp,
        "--dp-ledger",
        metavar="FILE",
        help="where the spend is kept (default: tether-dp-ledger-ID.json in the current folder)",
    )
    add_dashboard_flags(
        p,
        help="serve the owner's page: requests (accept / deny), handlers, audit log, published "
        "data (what a 'strict' worker needs to release anything); prints its one-time link",
    )
    add_flag(p, "--quiet", action="store_true", help="log only warnings")


def main(args: argparse.Namespace) -> int:
    """Serve the worker until SIGINT or SIGTERM; the exit status (see `console.serve`)."""
    setup_logging(args.quiet)
    if args.keyfile and not args.certfile:
        raise ValueError("--keyfile needs --certfile")
    if not args.dataset and any(getattr(args, name) is not None for name in _DATA_FLAGS):
        args.dataset = "mnist"  # the one dataset there is (the tutorial's `--testing` alone)
    release = Release.parse(args.policy)
    if release is Release.OPEN:
        print(f"WARNING: {OPEN_WARNING}", file=sys.stderr, flush=True)  # even with --quiet
    node = Node(
        args.id,
        limits=Limits(max_stored_bytes=int(args.max_stored_mb * _MB), max_objects=args.max_objects),
        release=release,
        guarded=True,  # a network peer's commands are bounded whatever the policy
    )
    if args.dataset:
        _publish_mnist(node, args)
    rules = _dp_rules(args, release)
    if rules is not None:
        enforce_dp(node, rules)
    generated = not args.token
    server = WorkerServer(
        node,
        host=args.host,
        port=args.port,
        token=args.token or None,
        ssl_context=server_ssl_context(args.certfile, args.keyfile) if args.certfile else None,
        limits=ServerLimits(
            max_message_bytes=int(args.max_message_mb * _MB),
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_handshakes=args.max_handshakes,
        ),
    )

    page = None
    if args.dashboard:
        from tether.dashboard import Dashboard

        page = Dashboard(
            node, host=args.dashboard_host, port=args.dashboard_port, title=f"worker {args.id}"
        )

    def ready() -> None:
        if generated:
            print(
                f"access token: {server.token}  (clients give it as tether train --token, "
                "tether.connect(url, token=...) or TETHER_TOKEN)"
            )
        print(f"release policy: {release.value}")
        if rules is not None:
            print(_dp_line(rules))
        if page is not None:
            print(f"the owner's dashboard (open once, in your browser): {page.url}")
        print(f"worker {args.id} listening on {server.url}", flush=True)

    try:
        status = serve(server.start, server.stop, ready, fast_loop=True)
    finally:
        if page is not None:
            page.close()
    if status == STOPPED:
        print(stopped_line("worker"), file=sys.stderr, flush=True)
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in busy:
        thread.join(timeout=0.5)
    if any(thread.is_alive() for thread in busy):  # a command outlived the grace period
        logging.getLogger(__name__).warning("exiting with commands still running")
        logging.shutdown()
        os._exit(status)
    return status


def _dp_rules(args: argparse.Namespace, release: Release) -> OwnerDP | None:
    """The owner's DP rules from the flags, or None when none is given."""
    given = {
        "--dp-noise": args.dp_noise,
        "--dp-clip": args.dp_clip,
        "--max-epsilon": args.max_epsilon,
    }
    if all(v is None for v in given.values()):
        if args.dp_ledger is not None:
            raise ValueError("--dp-ledger needs --dp-noise, --dp-clip and --max-epsilon")
        return None
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise ValueError(f"differential privacy needs {', '.join(missing)} too")
    if release is Release.OPEN:
        raise ValueError(
            "--policy open lets anything computed from the data leave, so a DP budget would "
            "protect nothing: use --policy training with the DP flags"
        )
    ledger = args.dp_ledger or f"tether-dp-ledger-{args.id}.json"
    return OwnerDP(args.dp_noise, args.dp_clip, args.max_epsilon, args.delta, ledger)


def _dp_line(rules: OwnerDP) -> str:
    """What the owner's DP rules are and what is spent already, for the start-up output."""
    spent = [rules.ledger.spent(d, rules.delta) for d in rules.ledger.datasets()]
    return (
        f"differential privacy: noise >= {rules.floor.noise:g}, clip <= {rules.floor.clip:g}, "
        f"ε <= {rules.max_epsilon:g} per dataset at δ = {rules.delta:g}; spent so far: "
        f"ε = {max(spent, default=0.0):.4g} (ledger {rules.ledger.path})"
    )


def _publish_mnist(node: Node, args: argparse.Namespace) -> None:
    """Load MNIST, keep the asked-for samples, print the per-digit counts as the websocket
    tutorial's workers do, and publish `(images, labels)` privately."""
    try:
        dataset = MNIST(
            root=args.data_root,
            train=not args.testing,
            transform=Compose([ToTensor(), Normalize((MEAN,), (STD,))]),
        )
    except DatasetError as exc:
        raise DatasetError(_cli_wording(str(exc))) from None
    data, targets = materialize(dataset)
    if args.labels:
        keep = torch.isin(targets, torch.tensor(parse_label_range(args.labels))).nonzero().flatten()
    elif args.partition:
        parts = parse_spec(args.partition, seed=args.seed)(targets)
        if not 0 <= args.part < len(parts):
            raise ValueError(
                f"--part {args.part} is not one of the {len(parts)} parts of {args.partition!r}"
            )
        keep = parts[args.part]
    else:
        keep = None
    if keep is not None:
        data, targets = data[keep].contiguous(), targets[keep].contiguous()
    if args.samples is not None:
        if args.samples < 1:
            raise ValueError(f"--samples must be a positive integer, got {args.samples}")
        data, targets = data[: args.samples].contiguous(), targets[: args.samples].contiguous()
    key = "mnist_testing" if args.testing else "mnist"
    split = "test" if args.testing else "train"
    counts = torch.bincount(targets, minlength=10)
    print(f"MNIST dataset ({split} set), available numbers on {args.id}:")
    for digit, count in enumerate(counts.tolist()):
        print(f"      {digit}: {count}")
    node.publish(
        key,
        (data, targets),
        private=True,
        tags=("#mnist", f"#{split}"),
        description=f"MNIST {split} images (N x 1 x 28 x 28, normalized) and labels",
    )
    print(f"datasets: {{{key!r}: {len(targets)} samples, private}}")
    print(f"len(datasets[{key}]): {len(targets)}")


def _cli_wording(message: str) -> str:
    """A dataset error as a command-line user acts on it (flags, not Python arguments)."""
    for python, cli in _CLI_ADVICE.items():
        message = message.replace(python, cli)
    return message
