"""`tether train`: federated training across network workers, as the websocket tutorial's
coordinator script ran it. Its help text is the coordinator's docstring (DESCRIPTION)."""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tether.errors import FederationError, TetherError
from tether.federated import coordinator, report
from tether.federated.coordinator import Coordinator
from tether.federated.data.partition import parse_label_groups
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import MODELS
from tether.transports.websocket import connect as websocket_connect

SUMMARY = "federated training across network workers"
DESCRIPTION = coordinator.__doc__

DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "training_rounds": 40,
    "federate_after_n_batches": 10,
    "lr": 0.1,
    "momentum": 0.0,
    "optimizer": "SGD",
    "loss": "nll_loss",
    "epochs": 1,
    "seed": 1,
    "eval_every": 10,
    "test_batch_size": 1000,
    "min_workers": 1,
    "round_timeout": 600.0,
    "dataset_key": "mnist",
    "test_key": "mnist_testing",
    "groups": "0-3/4-6/7-9",
    "model": "cnn",
    "checkpoint": "tether-checkpoint",
    "out": None,
    "token": None,
    "resume": False,
    "progress": True,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `tether train` (the tutorial's names and defaults)."""
    parser.add_argument(
        "--federation",
        type=Path,
        help="TOML file naming workers, evaluator, rounds and config (flags win)",
    )
    parser.add_argument(
        "--worker",
        action="append",
        metavar="NAME=URL",
        help="a training worker, e.g. alice=ws://127.0.0.1:8777 (repeat)",
    )
    parser.add_argument(
        "--evaluator",
        metavar="NAME=URL",
        help="the worker holding the test set, e.g. testing=ws://127.0.0.1:8780",
    )
    parser.add_argument("--token", help="the workers' access token (default: $TETHER_TOKEN)")
    numbers: list[tuple[str, type, str]] = [
        ("batch_size", int, "batch size of the training"),
        ("training_rounds", int, "number of federated learning rounds"),
        ("federate_after_n_batches", int, "batches each worker trains per round (0: whole epochs)"),
        ("epochs", int, "local epochs per round when federate_after_n_batches is 0"),
        ("lr", float, "learning rate"),
        ("momentum", float, "SGD momentum"),
        ("seed", int, "seed of the model's initial weights and of the batch orders"),
        ("eval_every", int, "evaluate after round 1, every N rounds and after the last"),
        ("test_batch_size", int, "batch size of the evaluation"),
        ("min_workers", int, "fewest workers a round may complete with"),
        ("round_timeout", float, "seconds to wait for the workers each round"),
    ]
    for name, kind, text in numbers:
        parser.add_argument(f"--{name}", type=kind, help=f"{text} (default {DEFAULTS[name]})")
    parser.add_argument("--optimizer", help="optimizer in torch.optim (default SGD)")
    parser.add_argument("--loss", help="loss in torch.nn.functional (default nll_loss)")
    parser.add_argument("--model", choices=sorted(MODELS), help="model to train (default cnn)")
    parser.add_argument("--groups", help="label groups for the report (default 0-3/4-6/7-9)")
    parser.add_argument("--dataset_key", help="key of the workers' dataset (default mnist)")
    parser.add_argument(
        "--test_key", help="key of the evaluator's test set (default mnist_testing)"
    )
    parser.add_argument("--checkpoint", help="checkpoint directory (default tether-checkpoint)")
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue from the checkpoint"
    )
    parser.add_argument("--out", help="write metrics.csv, metrics.json and accuracy.png here")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar"
    )


def main(args: argparse.Namespace, connect: Callable[..., Any] | None = None) -> int:
    """Run `tether train`; 0 on success, 1 with a message on a bad setup or a failed run."""
    try:
        settings = _settings(args)
        return _train(settings, connect)
    except (FederationError, ValueError, OSError) as exc:
        print(f"tether train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "tether train: interrupted; the checkpoint holds the last complete round "
            "(continue with --resume)",
            file=sys.stderr,
        )
        return 130


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the federation file, then the flags given."""
    settings = dict(DEFAULTS, workers={}, evaluator=None)
    if args.federation is not None:
        settings.update(_read_federation(args.federation))
    flags = {k: v for k, v in vars(args).items() if v is not None and k in DEFAULTS}
    settings.update(flags)
    if args.worker:
        settings["workers"] = dict(_name_url(w, "--worker") for w in args.worker)
    if args.evaluator:
        settings["evaluator"] = _name_url(args.evaluator, "--evaluator")
    if not settings["workers"]:
        raise ValueError("no workers: give --worker NAME=URL (repeat) or a --federation file")
    return settings


def _read_federation(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(DEFAULTS) - {"workers", "evaluator", "rounds"})
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {unknown}; known: workers, evaluator, "
            f"{', '.join(sorted(DEFAULTS))}"
        )
    if "rounds" in data:
        data["training_rounds"] = data.pop("rounds")
    workers = data.get("workers", {})
    if not isinstance(workers, dict) or not all(isinstance(u, str) for u in workers.values()):
        raise ValueError(f"{path}: [workers] must map names to URLs")
    evaluator = data.get("evaluator")
    if evaluator is not None:
        if not (isinstance(evaluator, dict) and len(evaluator) == 1):
            raise ValueError(f'{path}: [evaluator] must name one worker: testing = "ws://..."')
        data["evaluator"] = next(iter(evaluator.items()))
    if isinstance(data.get("groups"), list):
        data["groups"] = "/".join(data["groups"])
    return data


def _name_url(text: str, flag: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise ValueError(f"{flag} takes NAME=URL, e.g. alice=ws://127.0.0.1:8777; got {text!r}")
    return name, url


def parse_groups(text: str) -> list[tuple[int, ...]]:
    """'0-3/4-6/7-9' -> [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]."""
    return [tuple(group) for group in parse_label_groups(text)]


def train_config(settings: Mapping[str, Any]) -> TrainConfig:
    """The worker's training config from the tutorial's flags."""
    arguments: dict[str, Any] = {"lr": settings["lr"]}
    if settings["momentum"]:
        arguments["momentum"] = settings["momentum"]
    batches = settings["federate_after_n_batches"]
    return TrainConfig.parse(
        {
            "loss": settings["loss"],
            "optimizer": settings["optimizer"],
            "optimizer_args": arguments,
            "batch_size": settings["batch_size"],
            "epochs": settings["epochs"],
            "max_batches": batches or None,
            "shuffle": True,
            "seed": settings["seed"],
        }
    )


def _train(settings: dict[str, Any], connect: Callable[..., Any] | None) -> int:
    if connect is None:
        connect = websocket_connect
    token = settings["token"]
    workers = {
        name: _connect_or_retry(name, url, token, connect)
        for name, url in settings["workers"].items()
    }
    reachable = sum(hasattr(w, "client") for w in workers.values())
    if reachable < settings["min_workers"]:
        raise FederationError(
            f"{reachable} of {len(workers)} workers are reachable, fewer than "
            f"--min_workers {settings['min_workers']}"
        )
    evaluator = None
    if settings["evaluator"] is not None:
        name, url = settings["evaluator"]
        evaluator = _connect_or_retry(name, url, token, connect)
    torch.manual_seed(settings["seed"])
    coordinator = Coordinator(
        MODELS[settings["model"]](),
        workers,
        evaluator=evaluator,
        config=train_config(settings),
        rounds=settings["training_rounds"],
        eval_every=settings["eval_every"],
        min_workers=settings["min_workers"],
        round_timeout=settings["round_timeout"],
        dataset_key=settings["dataset_key"],
        test_key=settings["test_key"],
        groups=parse_groups(settings["groups"]),
        eval_config={"batch_size": settings["test_batch_size"], "loss": settings["loss"]},
        checkpoint_dir=settings["checkpoint"],
        resume=settings["resume"],
        progress=settings["progress"],
    )
    result = coordinator.run()
    if settings["out"]:
        out = Path(settings["out"])
        written = report.save_metrics(result.history, coordinator.groups, out)
        written.append(report.plot_accuracy(result.history, out / "accuracy.png"))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _connect_or_retry(name: str, url: str, token: str | None, connect: Callable[..., Any]) -> Any:
    """A connected worker; or, if it cannot be reached now, a function that tries again."""

    def attempt() -> Any:
        return connect(url, token=token, id=name)

    try:
        return attempt()
    except TetherError as exc:
        print(
            f"worker {name} at {url} is unreachable ({exc}); going on without it and trying "
            "again each round",
            file=sys.stderr,
        )
        return attempt
