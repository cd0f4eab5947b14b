"""`tether train`: federated training across network workers, as the websocket tutorial's
coordinator script ran it.

Long because it reads settings from three places (defaults, a federation file, flags), the
aggregation strategy's among them, and checks each with a message that names the file, key or
flag that is wrong."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tether.cli.console import add_flag, aliases_note, run_federation
from tether.errors import FederationError, TetherError
from tether.federated import report
from tether.federated.coordinator import Coordinator
from tether.federated.data.partition import parse_label_groups
from tether.federated.delegated.training import TrainConfig
from tether.federated.models import MODELS
from tether.federated.secure import SecureAggregation
from tether.federated.strategies import PARAMETERS, STRATEGIES, Strategy, make_strategy
from tether.federated.strategies.registry import describe, fits, parameters
from tether.transports.websocket import AccessDeniedError
from tether.transports.websocket import connect as websocket_connect

SUMMARY = "federated training across network workers"
DESCRIPTION = f"""\
Train a model across `tether worker` processes without their data leaving them. Each round
every worker trains the current model on its data for a few batches and sends back only the
weights; they are averaged (FedAvg, or the --strategy chosen) into the next round's model.
Every --eval-every rounds, and after the last, the evaluator scores each worker's model and the
averaged one on its test set, printing the tutorial's report.

A worker that cannot be reached, stops answering or misses --round-timeout is left out of
that round and tried again the next; the run stops when fewer than --min-workers answer. After
every round the model is saved to --checkpoint; --resume continues a stopped run from there
(Ctrl-C stops it, and says which round the checkpoint holds).

  tether train --worker alice=ws://127.0.0.1:8777 --worker bob=ws://127.0.0.1:8778 \\
      --evaluator testing=ws://127.0.0.1:8780 --token TOKEN --rounds 40
  tether train --federation examples/websocket_mnist/federation.toml
  tether train --federation examples/websocket_mnist/federation.toml --strategy fedprox --mu 0.01

{aliases_note("--batch-size")} --training-rounds is --rounds."""

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
    "secure_aggregation": False,
    "secure_threshold": None,
    "dp_noise": None,
    "dp_clip": None,
}
# What a federation file's keys hold (besides [workers] and [evaluator]): the type, and the
# words its error message uses. "rounds" is "training_rounds" (the tutorial's name).
TOML_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    **{
        key: (int, "an integer")
        for key in (
            "batch_size",
            "training_rounds",
            "federate_after_n_batches",
            "epochs",
            "seed",
            "eval_every",
            "test_batch_size",
            "min_workers",
            "secure_threshold",
        )
    },
    **{
        key: ((int, float), "a number")
        for key in ("lr", "momentum", "round_timeout", "dp_noise", "dp_clip")
    },
    **{
        key: (str, "a string")
        for key in ("optimizer", "loss", "model", "dataset_key", "test_key", "checkpoint", "out")
    },
    "token": (str, "a string"),
    "groups": ((str, list), 'a string or a list of strings, e.g. ["0-3", "4-6", "7-9"]'),
    "resume": (bool, "true or false"),
    "progress": (bool, "true or false"),
    "secure_aggregation": (bool, "true or false"),
}
TOML_ALIASES = {"rounds": "training_rounds"}
STRATEGY_FLAG = "strategy."  # the prefix of a strategy parameter's dest: strategy.mu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `tether train` (the tutorial's defaults; its underscore names work too)."""
    add_flag(
        parser,
        "--federation",
        type=Path,
        metavar="FILE",
        help="TOML file naming workers, evaluator, rounds and settings (flags win)",
    )
    add_flag(
        parser,
        "--worker",
        action="append",
        metavar="NAME=URL",
        help="a training worker, e.g. alice=ws://127.0.0.1:8777 (repeat)",
    )
    add_flag(
        parser,
        "--evaluator",
        metavar="NAME=URL",
        help="the worker holding the test set, e.g. testing=ws://127.0.0.1:8780",
    )
    add_flag(
        parser,
        "--token",
        help="the access token the workers printed at start (default: $TETHER_TOKEN)",
    )
    numbers: list[tuple[str, tuple[str, ...], type, str]] = [
        ("rounds", ("--training-rounds",), int, "federated learning rounds"),
        ("batch_size", (), int, "batch size of the training"),
        (
            "federate_after_n_batches",
            (),
            int,
            "batches each worker trains per round (0: whole epochs)",
        ),
        ("epochs", (), int, "local epochs per round when --federate-after-n-batches is 0"),
        ("lr", (), float, "learning rate"),
        ("momentum", (), float, "SGD momentum"),
        ("seed", (), int, "seed of the model's initial weights and of the batch orders"),
        ("eval_every", (), int, "evaluate after round 1, every N rounds and after the last"),
        ("test_batch_size", (), int, "batch size of the evaluation"),
        ("min_workers", (), int, "fewest workers a round may complete with"),
        ("round_timeout", (), float, "seconds to wait for the workers each round"),
        (
            "dp_noise",
            (),
            float,
            "ask every worker to train with DP-SGD at this noise multiplier at least (a worker "
            "whose owner set a higher floor uses that; needs --dp-clip)",
        ),
        ("dp_clip", (), float, "the per-sample clipping norm DP-SGD asks for (with --dp-noise)"),
    ]
    for name, aliases, kind, text in numbers:
        key = TOML_ALIASES.get(name, name)
        add_flag(
            parser,
            "--" + name.replace("_", "-"),
            *aliases,
            dest=key,
            type=kind,
            metavar="N" if kind is int else "X",
            help=text if DEFAULTS[key] is None else f"{text} (default {DEFAULTS[key]})",
        )
    add_flag(parser, "--optimizer", help="optimizer in torch.optim (default SGD)")
    add_flag(parser, "--loss", help="loss in torch.nn.functional (default nll_loss)")
    add_flag(parser, "--model", choices=sorted(MODELS), help="model to train (default cnn)")
    add_flag(parser, "--groups", help="label groups for the report (default 0-3/4-6/7-9)")
    add_flag(parser, "--dataset-key", help="key of the workers' dataset (default mnist)")
    add_flag(parser, "--test-key", help="key of the evaluator's test set (default mnist_testing)")
    add_flag(
        parser, "--checkpoint", metavar="DIR", help="checkpoint folder (default tether-checkpoint)"
    )
    add_flag(
        parser,
        "--resume",
        action="store_true",
        default=None,
        help="continue from the checkpoint",
    )
    add_flag(
        parser, "--out", metavar="DIR", help="write metrics.csv, metrics.json and accuracy.png here"
    )
    add_flag(
        parser,
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar",
    )
    add_flag(
        parser,
        "--secure-aggregation",
        action="store_true",
        default=None,
        help="learn only the sum of the workers' updates, never one worker's (SecAgg; "
        "docs/secure-aggregation.md); not with strategies that need each update",
    )
    add_flag(
        parser,
        "--secure-threshold",
        type=int,
        metavar="N",
        help="workers each secure aggregation step needs (default: a majority of the round's)",
    )
    add_strategy_flags(parser)


def add_strategy_flags(parser: argparse.ArgumentParser) -> None:
    """--strategy and its parameters (each strategy takes its own and the sampling ones)."""
    group = parser.add_argument_group(
        "strategy",
        "How the workers' models are combined each round (docs/strategies.md). Each\n"
        "parameter flag names the strategies that take it; giving another is an error.",
    )
    add_flag(
        group, "--strategy", choices=list(STRATEGIES), help="aggregation strategy (default fedavg)"
    )
    for name, parameter in PARAMETERS.items():
        takers = [s for s in STRATEGIES if name in parameters(s)]
        which = "every strategy" if len(takers) == len(STRATEGIES) else ", ".join(takers)
        add_flag(
            group,
            _flag(name),
            dest=STRATEGY_FLAG + name,
            type=parameter.kind,
            metavar="N" if parameter.kind is int else "X",
            help=f"{parameter.help} ({which})",
        )


def _flag(parameter: str) -> str:
    return "--" + parameter.replace("_", "-")


def main(args: argparse.Namespace, connect: Callable[..., Any] | None = None) -> int:
    """Run `tether train`; 0 on success, 1 with a message on a bad setup or a failed run.
    Ctrl-C raises console.Stopped, naming the checkpoint (`tether` prints it)."""
    try:
        settings = _settings(args)
        return _train(settings, connect)
    except (FederationError, ValueError, OSError) as exc:
        print(f"tether train: error: {exc}", file=sys.stderr)
        return 1


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
    settings["strategy"], settings["strategy_args"] = _strategy(args, settings)
    return settings


def _strategy(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The strategy's name and parameters: the federation file's [strategy] table, then the
    flags (a --strategy naming another strategy replaces the table)."""
    in_file, from_file = settings.pop("strategy_table", ("fedavg", {}))
    name = args.strategy or in_file
    if name != in_file:
        from_file = {}
    return name, {**from_file, **strategy_flags(args, name)}


def strategy_flags(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The strategy parameters given as flags (`add_strategy_flags`), each one `name` takes;
    ValueError naming the flags it does not take."""
    flags = {
        key.removeprefix(STRATEGY_FLAG): value
        for key, value in vars(args).items()
        if key.startswith(STRATEGY_FLAG) and value is not None
    }
    accepted = parameters(name)
    wrong = sorted(_flag(key) for key in flags if key not in accepted)
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: not a parameter of --strategy {name}, which takes "
            + ", ".join(_flag(key) for key in accepted)
        )
    return flags


def strategy(settings: Mapping[str, Any]) -> Strategy:
    """The aggregation strategy the settings name, with its parameters."""
    name = settings["strategy"]
    try:
        return make_strategy(name, settings["strategy_args"])
    except ValueError as exc:
        raise ValueError(f"--strategy {name}: {exc}") from None


def _read_federation(path: Path) -> dict[str, Any]:
    """The federation file's settings, each checked against TOML_TYPES; a ValueError naming
    the file, the key and what it must be otherwise."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    known = ["workers", "evaluator", *TOML_ALIASES, "strategy", *sorted(TOML_TYPES)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {', '.join(known)}")
    for alias, key in TOML_ALIASES.items():
        if alias in data:
            data[key] = data.pop(alias)
    names = {key: alias for alias, key in TOML_ALIASES.items()}  # as the file spells them
    for key, value in data.items():
        if key in TOML_TYPES:
            kind, expected = TOML_TYPES[key]
            fits = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
            if isinstance(value, list):
                fits = fits and all(isinstance(item, str) for item in value)
            if not fits:
                raise ValueError(
                    f"{path}: {names.get(key, key)} must be {expected}, got {_toml_value(value)}"
                )
    if "model" in data and data["model"] not in MODELS:
        raise ValueError(f"{path}: model must be one of {sorted(MODELS)}, got {data['model']!r}")
    workers = data.get("workers", {})
    if not isinstance(workers, dict) or not all(isinstance(u, str) for u in workers.values()):
        raise ValueError(f'{path}: [workers] must map names to URLs: alice = "ws://..."')
    evaluator = data.get("evaluator")
    if evaluator is not None:
        if not (
            isinstance(evaluator, dict)
            and len(evaluator) == 1
            and all(isinstance(u, str) for u in evaluator.values())
        ):
            raise ValueError(f'{path}: [evaluator] must name one worker: testing = "ws://..."')
        data["evaluator"] = next(iter(evaluator.items()))
    if isinstance(data.get("groups"), list):
        data["groups"] = "/".join(data["groups"])
    if "strategy" in data:
        data["strategy_table"] = _read_strategy(path, data.pop("strategy"))
    return data


def _read_strategy(path: Path, table: Any) -> tuple[str, dict[str, Any]]:
    """A federation file's [strategy] table: its name and parameters, each checked."""
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise ValueError(
            f'{path}: [strategy] must be a table with a name: name = "fedprox", mu = 0.01'
        )
    arguments = dict(table)
    name = arguments.pop("name")
    if name not in STRATEGIES:
        raise ValueError(f"{path}: strategy.name must be one of {list(STRATEGIES)}, got {name!r}")
    accepted = parameters(name)
    for key, value in arguments.items():
        if key not in accepted:
            raise ValueError(
                f"{path}: strategy.{key} is not a parameter of {name}, which takes "
                + ", ".join(accepted)
            )
        kind = PARAMETERS[key].kind
        if not fits(value, kind):
            raise ValueError(
                f"{path}: strategy.{key} must be {describe(kind)}, got {_toml_value(value)}"
            )
    return name, arguments


def _toml_value(value: Any) -> str:
    """A value as the TOML file wrote it: "forty" (a string), 4.5, true, [...]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}" (a string)'
    return f"{value!r} ({type(value).__name__})"


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
            "dp": _asked_dp(settings),
        }
    )


def _asked_dp(settings: Mapping[str, Any]) -> dict[str, float] | None:
    """DP-SGD as the coordinator asks for it (`--dp-noise` with `--dp-clip`): workers train
    with at least this much privacy; an owner's own rules may ask for more, never less."""
    noise, clip = settings["dp_noise"], settings["dp_clip"]
    if noise is None and clip is None:
        return None
    if noise is None or clip is None:
        raise ValueError("--dp-noise and --dp-clip go together: give both, or neither")
    return {"noise": noise, "clip": clip}


def _train(settings: dict[str, Any], connect: Callable[..., Any] | None) -> int:
    aggregation = strategy(settings)  # a bad parameter stops the run before any connection
    if connect is None:
        connect = websocket_connect
    workers: dict[str, Any] = {}
    unreachable: dict[str, str] = {}
    for name, url in settings["workers"].items():
        workers[name] = _connect(name, url, settings["token"], connect)
        if not hasattr(workers[name], "client"):
            unreachable[name] = f"worker {name} at {url} is unreachable ({workers[name].why})"
    reachable = len(workers) - len(unreachable)
    if reachable < settings["min_workers"]:
        raise FederationError(
            f"{reachable} of {len(workers)} workers are reachable, fewer than "
            f"--min-workers {settings['min_workers']}: " + "; ".join(unreachable.values())
        )
    for line in unreachable.values():
        print(f"{line}; going on without it and trying again each round", file=sys.stderr)
    evaluator = None
    if settings["evaluator"] is not None:
        name, url = settings["evaluator"]
        evaluator = _connect(name, url, settings["token"], connect)
        if not hasattr(evaluator, "client"):
            print(
                f"the evaluator {name} at {url} is unreachable ({evaluator.why}); "
                "trying again at each evaluation",
                file=sys.stderr,
            )
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
        strategy=aggregation,
        secure_aggregation=(
            SecureAggregation(threshold=settings["secure_threshold"])
            if settings["secure_aggregation"]
            else False
        ),
        checkpoint_dir=settings["checkpoint"],
        resume=settings["resume"],
        progress=settings["progress"],
    )
    result = run_federation(coordinator, resume="continue with --resume")
    if settings["out"]:
        out = Path(settings["out"])
        written = report.save_metrics(result.history, coordinator.groups, out)
        written.append(report.plot_accuracy(result.history, out / "accuracy.png"))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


class _Retry:
    """Connects to a worker that could not be reached at the start (the coordinator calls it
    each round until it answers); `why` says what went wrong the first time."""

    def __init__(self, attempt: Callable[[], Any], why: str) -> None:
        self.attempt, self.why = attempt, why

    def __call__(self) -> Any:
        return self.attempt()


def _connect(name: str, url: str, token: str | None, connect: Callable[..., Any]) -> Any:
    """A connected worker; or, if it cannot be reached now, a _Retry. A refused token stops
    the run: it would be refused again every round."""

    def attempt() -> Any:
        return connect(url, token=token, id=name)

    try:
        return attempt()
    except AccessDeniedError:
        given = token if token is not None else os.environ.get("TETHER_TOKEN")
        raise FederationError(
            f"worker {name} at {url} refused the access token "
            f"({'wrong token' if given else 'none given'}): give the token it printed at "
            "start with --token, or set TETHER_TOKEN"
        ) from None
    except TetherError as exc:
        return _Retry(attempt, str(exc))
