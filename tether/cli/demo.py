"""The websocket tutorial in one call: `run_demo(out_dir)` (what `tether demo` runs).

It starts alice (digits 0-3), bob (4-6), charlie (7-9) and the evaluator (the official test
set) as separate `tether worker` processes on 127.0.0.1, as the tutorial's
start_websocket_servers.py did, trains the tutorial's CNN across them with the coordinator
(a progress bar over rounds, the tutorial's report), and writes metrics.csv, metrics.json and
accuracy.png. Offline: the workers serve the MNIST sample shipped inside tether.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tether.cli.console import add_flag, aliases_note, run_federation
from tether.datasets import MNIST, materialize
from tether.datasets.mnist import MEAN, STD
from tether.federated import report
from tether.federated.coordinator import Coordinator, FederationResult
from tether.federated.delegated.training import TrainConfig, batches
from tether.federated.models import Net
from tether.federated.report import TUTORIAL_GROUPS
from tether.transforms import Compose, Normalize, ToTensor
from tether.transports.websocket import connect

SUMMARY = "the websocket MNIST tutorial end to end, offline"
DESCRIPTION = f"""\
The websocket federated MNIST tutorial, end to end, on this machine and offline.

Starts four `tether worker` processes on 127.0.0.1, as the tutorial's start_websocket_servers.py
did: alice (digits 0-3), bob (4-6) and charlie (7-9) each hold their part of the MNIST sample
shipped with tether, and testing holds the official 10,000 test images. Then trains the
tutorial's CNN across them (`tether train` with its defaults: 10 batches of 32 per worker per
round, SGD lr 0.1, FedAvg), prints the tutorial's report with a progress bar, and writes
metrics.csv, metrics.json, accuracy.png and the checkpoint to --out. Ctrl-C stops it and
its workers, and says which round the checkpoint holds.

{aliases_note("--eval-every")} --training-rounds is --rounds."""
_READY = re.compile(r"listening on (ws://\S+)")


@dataclass
class WorkerProcess:
    """A `tether worker` process this demo started, its address and its log file."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path

    def kill(self) -> None:
        """Kill it at once (SIGKILL), as a crash would."""
        self.process.kill()
        self.process.wait()


def stop(process: subprocess.Popen) -> None:
    """Ask a worker to stop (SIGTERM), then kill it if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_worker(
    name: str, args: Sequence[str], token: str, log_dir: Path, threads: int | None = None
) -> subprocess.Popen:
    """Start `tether worker --id NAME ARGS` on a free port of 127.0.0.1 (see `wait_ready`).
    `threads`: torch threads in the worker (OMP_NUM_THREADS), so workers sharing a machine do
    not oversubscribe its cores."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TETHER_TOKEN=token)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [
        sys.executable,
        "-m",
        "tether.cli",
        "worker",
        "--id",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
    ]
    with (log_dir / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )


def wait_ready(
    name: str, process: subprocess.Popen, log_dir: Path, timeout: float = 120.0
) -> WorkerProcess:
    """Wait until a started worker says where it listens."""
    log = log_dir / f"{name}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _READY.search(log.read_text(errors="replace"))
        if found:
            return WorkerProcess(name, process, found.group(1), log)
        if process.poll() is not None:
            raise RuntimeError(
                f"worker {name} exited with {process.returncode}:\n"
                f"{log.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"worker {name} did not start listening within {timeout:g} s; see {log}")


TUTORIAL_WORKERS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}


@contextmanager
def tutorial_workers(
    log_dir: Path, evaluator: bool = True, test_samples: int | None = None
) -> Iterator[tuple[dict[str, WorkerProcess], WorkerProcess | None, str]]:
    """alice, bob and charlie (each holding its digits of the MNIST sample) and the evaluator
    `testing` (the test set, or its first `test_samples` images) as processes; stopped on exit.
    Yields (workers, evaluator, token)."""
    token = secrets.token_urlsafe(16)
    threads = max(1, (os.cpu_count() or 1) // len(TUTORIAL_WORKERS))
    data = ["--dataset", "mnist", "--quiet"]
    commands = {name: [*data, "--labels", digits] for name, digits in TUTORIAL_WORKERS.items()}
    if evaluator:
        commands["testing"] = [*data, "--testing"]
        if test_samples is not None:
            commands["testing"] += ["--samples", str(test_samples)]
    processes: dict[str, subprocess.Popen] = {}
    ready: dict[str, WorkerProcess] = {}
    try:
        for name, args in commands.items():  # all start at once; then wait for each
            processes[name] = start_worker(
                name, args, token, log_dir, None if name == "testing" else threads
            )
        for name, process in processes.items():
            ready[name] = wait_ready(name, process, log_dir)
        workers = {n: w for n, w in ready.items() if n in TUTORIAL_WORKERS}
        yield workers, ready.get("testing"), token
    finally:
        for process in processes.values():
            stop(process)


def run_demo(
    out_dir: str | Path,
    rounds: int = 40,
    *,
    eval_every: int = 10,
    batch_size: int = 32,
    batches_per_round: int = 10,
    lr: float = 0.1,
    seed: int = 1,
    kill: tuple[str, int] | None = None,
    central: bool = False,
    test_samples: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the websocket tutorial end to end; returns the paths written and the accuracies.

    `kill=("bob", 3)` kills bob's process during round 3, to show a round going on without a
    worker. `central=True` also trains the same CNN centrally on the pooled sample with the same
    batch size, learning rate and total number of optimizer steps, for comparison.
    `test_samples`: evaluate on the first N test images only (a quicker run; default all)."""
    out = Path(out_dir)
    with tutorial_workers(out / "workers", test_samples=test_samples) as (
        workers,
        evaluator,
        token,
    ):
        for worker in workers.values():
            log(f"worker {worker.name} at {worker.url}: {_digit_counts(worker.log)}")
        torch.manual_seed(seed)
        handles = {name: connect(w.url, token=token, id=name) for name, w in workers.items()}
        assert evaluator is not None
        on_start = None
        if kill is not None:
            victim, at = kill

            def on_start(r: int) -> None:
                if r == at:
                    log(f"(killing worker {victim} during round {r})")
                    workers[victim].kill()

        config = TrainConfig(
            batch_size=batch_size,
            max_batches=batches_per_round,
            optimizer_args={"lr": lr},
            seed=seed,
        )
        coordinator = Coordinator(
            Net(),
            handles,
            evaluator=connect(evaluator.url, token=token),
            config=config,
            rounds=rounds,
            eval_every=eval_every,
            checkpoint_dir=out / "checkpoint",
            log=log,
            progress=progress,
            on_round_start=on_start,
        )
        started = time.perf_counter()
        result = run_federation(coordinator)
        seconds = time.perf_counter() - started
    summary = _write(result, out, seconds)
    if central:
        steps = rounds * batches_per_round * len(TUTORIAL_WORKERS)
        summary["central_accuracy"] = central_accuracy(steps, batch_size, lr, seed)
        log(
            f"Central training, same CNN, {steps} steps of {batch_size}: "
            f"{100 * summary['central_accuracy']:.2f}%"
        )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `tether demo`."""
    add_flag(
        parser,
        "--out",
        default="websocket-mnist",
        help="folder for metrics, plot and checkpoint (default websocket-mnist)",
    )
    add_flag(
        parser,
        "--rounds",
        "--training-rounds",
        type=int,
        default=40,
        metavar="N",
        help="federated learning rounds (default 40)",
    )
    add_flag(
        parser,
        "--eval-every",
        type=int,
        default=10,
        metavar="N",
        help="evaluate after round 1, every N rounds and after the last (default 10)",
    )
    add_flag(
        parser,
        "--kill",
        metavar="WORKER@ROUND",
        help="kill a worker's process during a round, e.g. bob@3",
    )
    add_flag(
        parser,
        "--test-samples",
        type=int,
        metavar="N",
        help="evaluate on the first N test images only (default: all 10,000)",
    )
    add_flag(
        parser,
        "--central",
        action="store_true",
        help="also train the CNN centrally with the same steps, to compare",
    )


def main(args: argparse.Namespace) -> int:
    """Run `tether demo`: the demo, then a summary of what it reached and wrote."""
    kill = None
    if args.kill:
        name, _, at = args.kill.partition("@")
        if name not in TUTORIAL_WORKERS or not at.isdigit():
            print(
                f"tether demo: error: --kill takes WORKER@ROUND with a worker of "
                f"{sorted(TUTORIAL_WORKERS)}, e.g. bob@3; got {args.kill!r}",
                file=sys.stderr,
            )
            return 2
        kill = (name, int(at))
    summary = run_demo(
        args.out,
        args.rounds,
        eval_every=args.eval_every,
        kill=kill,
        central=args.central,
        test_samples=args.test_samples,
    )
    print(f"{summary['rounds']} rounds in {summary['seconds']:.1f} s")
    for name, accuracy in summary["accuracy"].items():
        print(f"  {name}: {100 * accuracy:.2f}%")
    if "central_accuracy" in summary:
        print(f"  central training: {100 * summary['central_accuracy']:.2f}%")
    print("wrote " + ", ".join(str(p) for p in summary["paths"]))
    return 0


def _digit_counts(log: Path) -> str:
    counts = re.findall(r"^\s+(\d): (\d+)$", log.read_text(), flags=re.MULTILINE)
    return ", ".join(f"{d}: {n}" for d, n in counts if n != "0")


def _write(result: FederationResult, out: Path, seconds: float) -> dict[str, Any]:
    paths = report.save_metrics(result.history, TUTORIAL_GROUPS, out)
    paths.append(report.plot_accuracy(result.history, out / "accuracy.png"))
    last: dict[str, Any] = next((r["eval"] for r in reversed(result.history) if r.get("eval")), {})
    return {
        "paths": paths,
        "seconds": seconds,
        "rounds": len(result.history),
        "accuracy": {name: r["accuracy"] for name, r in last.items()},
    }


# ---- the same data and model, without tether ---------------------------------------------------


def mnist_tensors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST sample as `tether worker` serves it: normalized NCHW images, labels."""
    transform = Compose([ToTensor(), Normalize((MEAN,), (STD,))])
    return materialize(MNIST(train=train, transform=transform))


def central_accuracy(steps: int, batch_size: int = 32, lr: float = 0.1, seed: int = 1) -> float:
    """Test accuracy of the tutorial's CNN trained centrally on the pooled sample, in plain
    PyTorch: `steps` SGD steps of `batch_size`, epoch after shuffled epoch."""
    data, targets = mnist_tensors(train=True)
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    per_epoch = -(-len(data) // batch_size)
    config = TrainConfig(batch_size=batch_size, epochs=-(-steps // per_epoch), max_batches=steps)
    for x, y in batches(data, targets, config, torch.Generator().manual_seed(seed)):
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        optimizer.step()
    test, labels = mnist_tensors(train=False)
    with torch.no_grad():
        return float((model.eval()(test).argmax(1) == labels).float().mean())
