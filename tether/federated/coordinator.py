"""The coordinator of delegated federated training (the websocket tutorial's client script).

Each round it sends the global model (as a spec: plain data) and the training config to every
worker at once, one thread per worker, waits for their answers up to the round timeout,
aggregates them (FedAvg by default) and checkpoints. Every `eval_every` rounds, and after the
last, the evaluator scores each worker's model and the federated one on its test set.

A worker that is unreachable, dies or misses the timeout is left out of that round and tried
again the next; a worker that refuses the job (a bad config, an unknown dataset key) is told so
once and left out for good. The run stops with a clear message when fewer than `min_workers`
answer. The checkpoint (safetensors + JSON, written atomically after every round) lets
`resume=True` continue where a stopped run left off, with the same result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tether.errors import ConnectionLostError, ObjectNotFoundError, RemoteError, TetherError
from tether.federated import modelspec, report
from tether.federated.delegated import EVALUATE, FIT
from tether.federated.fedavg import Strategy, Update, fedavg
from tether.federated.training import EvalConfig, TrainConfig

TUTORIAL_GROUPS = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))
CHECKPOINT_JSON = "checkpoint.json"

Log = Callable[[str], None]


class FederationError(TetherError):
    """The run cannot go on: too few workers answered, or the checkpoint does not fit."""


# ---- the tutorial's models -------------------------------------------------------------------


class Net(nn.Module):
    """The websocket tutorial's CNN: two 5x5 convolutions (1->20->50), two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def mlp() -> nn.Module:
    """A small MLP for MNIST (784-200-10)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10), nn.LogSoftmax(dim=1)
    )


MODELS: dict[str, Callable[[], nn.Module]] = {"cnn": Net, "mlp": mlp}


# ---- one worker, as the coordinator sees it --------------------------------------------------


@dataclass
class _Job:
    """One worker's part of one round, run in its own (daemon) thread."""

    round: int
    thread: threading.Thread | None = None
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass
class _Link:
    """A worker: its handle (made by `connect` when the worker was not reachable before), the
    job it is still running, and why it was dropped for good (if it refused the job)."""

    name: str
    handle: Any = None
    connect: Callable[[], Any] | None = None
    busy: _Job | None = None
    refused: str | None = None
    missed: list[int] = field(default_factory=list)
    dataset: tuple[Any, Any] | None = None

    def client(self) -> Any:
        if self.handle is None:
            if self.connect is None:
                raise ConnectionLostError(f"worker {self.name!r} has no connection")
            self.handle = self.connect()
        return self.handle.client

    def pointers(self, key: str) -> tuple[Any, Any]:
        """Pointers to the worker's dataset, looked up once per connection."""
        if self.dataset is None:
            self.dataset = dataset_pointers(self.client(), key)
        return self.dataset


def _link(name: str, worker: Any) -> _Link:
    if hasattr(worker, "client"):
        return _Link(name, handle=worker)
    if callable(worker):
        return _Link(name, connect=worker)
    raise TypeError(
        f"worker {name!r} must be a worker (with .client) or a function that "
        f"connects to one, got {type(worker).__name__}"
    )


def dataset_pointers(client: Any, key: str) -> tuple[Any, Any]:
    """Pointers to a published `(data, targets)` dataset (the form `tether worker` publishes).
    Waits for the lookup, so an unknown key is reported as such, not by a later command."""
    data, targets = client.worker.dataset(key)
    try:
        client.flush()
    except RemoteError as exc:  # not a stale pointer: the worker has no such dataset
        raise FederationError(f"worker {client.name!r} has no dataset {key!r}: {exc}") from None
    return data, targets


def remote_fit(client: Any, dataset: tuple[Any, Any], spec: dict, config: TrainConfig) -> dict:
    """Run `fit` on a worker's dataset; its answer (weights and metrics)."""
    from tether.remote.client import ref

    data, targets = dataset
    result = client.call(
        FIT, [spec, ref(data), ref(targets), config.to_dict()], kind="object", flush=True
    )
    return _checked(result.get(), spec["state"], client.name)


def _checked(answer: Any, state: Mapping[str, torch.Tensor], worker: str) -> dict:
    """A worker's answer, if it can be averaged: weights of the model's shapes, samples used."""
    weights = answer.get("weights") if isinstance(answer, dict) else None
    fits = (
        isinstance(weights, dict)
        and weights.keys() == state.keys()
        and all(
            isinstance(weights[k], torch.Tensor)
            and weights[k].shape == v.shape
            and weights[k].dtype == v.dtype
            for k, v in state.items()
        )
    )
    samples = answer.get("samples") if fits else None
    if not (
        fits
        and type(samples) is int
        and samples > 0
        and isinstance(answer.get("losses"), list)
        and isinstance(answer.get("seconds"), float)
    ):
        raise FederationError(
            f"worker {worker!r} answered with something other than this model's weights and metrics"
        )
    return answer


def remote_evaluate(
    client: Any, dataset: tuple[Any, Any], specs: Mapping[str, dict], config: EvalConfig
) -> dict[str, dict]:
    """Score several models on an evaluator's test set, in one round trip."""
    from tether.remote.client import ref
    from tether.remote.pointer import get_all

    data, targets = dataset
    pointers = [
        client.call(
            EVALUATE, [spec, ref(data), ref(targets), config.to_dict()], kind="object", flush=True
        )
        for spec in specs.values()
    ]
    return dict(zip(specs, get_all(pointers), strict=True))


# ---- the coordinator -------------------------------------------------------------------------


@dataclass
class FederationResult:
    """What a run leaves: the global weights, the model loaded with them, every round's record."""

    state: dict[str, torch.Tensor]
    model: nn.Module
    history: list[dict[str, Any]]


class Coordinator:
    """`Coordinator(model, {"alice": alice, ...}, evaluator=testing).run()`.

    `workers` maps names to worker handles (VirtualWorker, WebsocketClientWorker: anything with
    `.client`) or to functions that connect to one (tried again each round until one answers).
    `config` is the training config each worker runs per round (`max_batches` is the tutorial's
    federate_after_n_batches); its seed is varied per round and worker. Models are evaluated
    after round 1, every `eval_every` rounds after that, and after the last (the tutorial's
    rounds 1, 11, 21, 31, 40). `checkpoint_dir`: where the global model and the history are
    saved after each round; `resume`: continue from the checkpoint there. `on_round_start(r)`
    is called once the round's jobs are out (to inject faults in demos and tests)."""

    def __init__(
        self,
        model: nn.Module,
        workers: Mapping[str, Any],
        *,
        evaluator: Any = None,
        config: TrainConfig | Mapping[str, Any] | None = None,
        rounds: int = 40,
        eval_every: int = 10,
        min_workers: int = 1,
        round_timeout: float = 600.0,
        dataset_key: str = "mnist",
        test_key: str = "mnist_testing",
        groups: Sequence[Sequence[int]] = TUTORIAL_GROUPS,
        eval_config: EvalConfig | Mapping[str, Any] | None = None,
        strategy: Strategy = fedavg,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        log: Log = print,
        progress: bool = False,
        on_round_start: Callable[[int], None] | None = None,
    ) -> None:
        if not workers:
            raise ValueError("a federation needs at least one worker")
        if not 1 <= min_workers <= len(workers):
            raise ValueError(
                f"min_workers must be between 1 and {len(workers)} (the workers "
                f"given), got {min_workers}"
            )
        if rounds < 1 or eval_every < 1 or round_timeout <= 0:
            raise ValueError("rounds and eval_every must be >= 1 and round_timeout > 0")
        self.model = model
        self.links = [_link(name, worker) for name, worker in workers.items()]
        self.evaluator = None if evaluator is None else _link("evaluator", evaluator)
        self.config = TrainConfig.parse(config or {})
        self.eval_config = EvalConfig.parse(eval_config or {})
        self.rounds, self.eval_every, self.min_workers = rounds, eval_every, min_workers
        self.round_timeout = round_timeout
        self.dataset_key, self.test_key = dataset_key, test_key
        self.groups = [tuple(g) for g in groups]
        self.strategy = strategy
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume = resume
        self.log = log
        self.progress = progress
        self.on_round_start = on_round_start
        self.spec = modelspec.describe(model)
        self.state: dict[str, torch.Tensor] = dict(self.spec["state"])
        self.history: list[dict[str, Any]] = []

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> FederationResult:
        """Train for the remaining rounds; the global model and the history."""
        from tqdm import tqdm

        first = self._restore() + 1 if self.resume else 1
        rounds = range(first, self.rounds + 1)
        bar = tqdm(rounds, desc="rounds", unit="round", disable=not self.progress)
        log = self.log
        if self.progress and log is print:  # keep the bar whole
            self.log = tqdm.write
        try:
            for r in bar:
                self._round(r)
                bar.set_postfix_str(self._postfix())
        finally:
            bar.close()
            self.log = log
        self._summary()
        return FederationResult(dict(self.state), self.global_model(), self.history)

    def global_model(self) -> nn.Module:
        """The model given, loaded with the current global weights."""
        self.model.load_state_dict(self.state, strict=False)
        return self.model

    def _round(self, r: int) -> None:
        if not self.progress:  # the bar shows it
            self.log(f"Training round {r}/{self.rounds}")
        start = time.perf_counter()
        updates, left_out = self._train(r)
        record: dict[str, Any] = {
            "round": r,
            "workers": list(updates),
            "left_out": left_out,
            "train": {name: _train_metrics(result) for name, result in updates.items()},
        }
        for name, why in left_out.items():
            self.log(f"Round {r}: worker {name} left out ({why})")
        if len(updates) < self.min_workers:
            raise FederationError(self._too_few(r, updates, left_out))
        ordered = [
            Update(name, result["weights"], result["samples"]) for name, result in updates.items()
        ]
        self.state = self.strategy(ordered, self.state)
        record["train_seconds"] = time.perf_counter() - start
        if self._evaluates(r):
            record["eval"] = self._evaluate(r, updates)
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self._checkpoint(r)

    def _evaluates(self, r: int) -> bool:
        return self.evaluator is not None and ((r - 1) % self.eval_every == 0 or r == self.rounds)

    # ---- training on the workers ------------------------------------------------------------

    def _train(self, r: int) -> tuple[dict[str, dict], dict[str, str]]:
        """Every available worker trains at once; the answers within the round timeout."""
        spec = modelspec.with_state(self.spec, self.state)
        jobs: dict[str, _Job] = {}
        left_out: dict[str, str] = {}
        for i, link in enumerate(self.links):
            if link.refused is not None:
                continue
            if link.busy is not None and link.busy.running():
                left_out[link.name] = f"still busy with round {link.busy.round}"
                continue
            config = replace(self.config, seed=_round_seed(self.config.seed, r, i))
            jobs[link.name] = link.busy = self._start(link, r, spec, config)
        if self.on_round_start is not None:
            self.on_round_start(r)
        deadline = time.monotonic() + self.round_timeout
        updates: dict[str, dict] = {}
        for link in self.links:
            job = jobs.get(link.name)
            if job is None:
                continue
            assert job.thread is not None
            job.thread.join(max(deadline - time.monotonic(), 0.0))
            if job.running():
                left_out[link.name] = f"missed the round timeout of {self.round_timeout:g} s"
            elif job.error is not None:
                left_out[link.name] = self._failed(link, job.error)
            else:
                assert job.result is not None
                updates[link.name] = job.result
        for name in left_out:
            next(link for link in self.links if link.name == name).missed.append(r)
        return updates, left_out

    def _start(self, link: _Link, r: int, spec: dict, config: TrainConfig) -> _Job:
        job = _Job(r)

        def work() -> None:
            try:
                job.result = remote_fit(
                    link.client(), link.pointers(self.dataset_key), spec, config
                )
            except BaseException as exc:  # reported by the round, never lost in the thread
                job.error = exc

        job.thread = threading.Thread(target=work, name=f"fit-{link.name}-{r}", daemon=True)
        job.thread.start()
        return job

    def _failed(self, link: _Link, error: BaseException) -> str:
        """Why a worker is left out. Lost connections are tried again next round (a new
        connection is a new session: the dataset is looked up again); a worker that answered
        with a refusal would refuse again, so it is dropped."""
        if isinstance(error, ConnectionLostError | ObjectNotFoundError) or not isinstance(
            error, TetherError
        ):
            link.dataset = None
            return f"unreachable: {error}"
        link.refused = str(error)
        self.log(f"Worker {link.name} refused the job and is left out from now on: {error}")
        return f"refused: {error}"

    def _too_few(self, r: int, updates: Mapping[str, Any], left_out: Mapping[str, str]) -> str:
        answered = ", ".join(updates) or "none"
        reasons = {link.name: f"refused: {link.refused}" for link in self.links if link.refused}
        why = "; ".join(f"{name}: {reason}" for name, reason in {**reasons, **left_out}.items())
        where = (
            f" The checkpoint of round {r - 1} is in {self.checkpoint_dir}: fix the "
            "workers and run again with --resume."
            if self.checkpoint_dir and r > 1
            else ""
        )
        return (
            f"round {r}: {len(updates)} of {len(self.links)} workers answered ({answered}), "
            f"fewer than min_workers={self.min_workers}. Left out: {why}.{where}"
        )

    # ---- evaluation -------------------------------------------------------------------------

    def _evaluate(self, r: int, updates: Mapping[str, dict]) -> dict[str, dict]:
        self.log("Evaluating models")
        specs = {
            f"Model update {name}": modelspec.with_state(self.spec, result["weights"])
            for name, result in updates.items()
        }
        specs[report.FEDERATED] = modelspec.with_state(self.spec, self.state)
        assert self.evaluator is not None
        try:
            results = remote_evaluate(
                self.evaluator.client(),
                self.evaluator.pointers(self.test_key),
                specs,
                self.eval_config,
            )
        except TetherError as exc:
            self.evaluator.dataset = None
            self.log(f"Round {r}: evaluation skipped, the evaluator failed: {exc}")
            return {}
        for name, result in results.items():
            for line in report.evaluation_lines(name, result, self.groups):
                self.log(line)
        return results

    # ---- checkpoints ------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        """What must match for a checkpoint to fit: the model's structure and the config."""
        described = json.dumps(
            [modelspec.structure(self.spec), self.config.to_dict()], default=str, sort_keys=True
        )
        return hashlib.sha256(described.encode()).hexdigest()[:16]

    def _checkpoint(self, r: int) -> None:
        """Weights first (a new file per round), then the JSON that names them: the JSON's
        replacement is the commit, so a kill at any moment leaves the last complete round."""
        if self.checkpoint_dir is None:
            return
        from safetensors.torch import save

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        weights = f"global-round{r:05d}.safetensors"
        payload = save({k: v.contiguous() for k, v in self.state.items()})
        report.write_atomic(self.checkpoint_dir / weights, lambda f: f.write(payload))
        meta = {
            "round": r,
            "rounds": self.rounds,
            "weights": weights,
            "fingerprint": self._fingerprint(),
            "history": self.history,
        }
        report.write_atomic(
            self.checkpoint_dir / CHECKPOINT_JSON,
            lambda f: f.write(json.dumps(meta, indent=1).encode()),
        )
        for old in self.checkpoint_dir.glob("global-round*.safetensors"):
            if old.name != weights:
                old.unlink(missing_ok=True)

    def _restore(self) -> int:
        """Load the checkpoint; the last round it completed (0 when there is none)."""
        from safetensors.torch import load

        if self.checkpoint_dir is None:
            raise FederationError("resume needs a checkpoint directory")
        path = self.checkpoint_dir / CHECKPOINT_JSON
        if not path.exists():
            self.log(f"No checkpoint in {self.checkpoint_dir}: starting at round 1")
            return 0
        meta = json.loads(path.read_text())
        if meta.get("fingerprint") != self._fingerprint():
            raise FederationError(
                f"the checkpoint in {self.checkpoint_dir} was made with another "
                "model or training config; use those, or another directory"
            )
        state = load((self.checkpoint_dir / meta["weights"]).read_bytes())
        if state.keys() != self.state.keys():
            raise FederationError(
                f"the checkpoint's weights in {self.checkpoint_dir} do not fit this model"
            )
        self.state = state
        self.history = meta["history"]
        self.log(f"Resuming after round {meta['round']} from {self.checkpoint_dir}")
        return int(meta["round"])

    # ---- what the user sees -----------------------------------------------------------------

    def _postfix(self) -> str:
        last = self.history[-1] if self.history else None
        if last is None:
            return ""
        federated = last.get("eval", {}).get(report.FEDERATED)
        accuracy = f" acc {100 * federated['accuracy']:.1f}%" if federated else ""
        return f"{len(last['workers'])} workers{accuracy}"

    def _summary(self) -> None:
        for link in self.links:
            if link.refused is not None:
                self.log(f"Worker {link.name} was left out after refusing: {link.refused}")
            elif link.missed:
                rounds = ", ".join(str(r) for r in link.missed)
                self.log(f"Worker {link.name} missed round(s) {rounds}; the others ran without it")


def _round_seed(seed: int, r: int, index: int) -> int:
    """A different batch order for every round and worker, the same on every run (and resume)."""
    return seed * 1_000_003 + r * 1009 + index


def _train_metrics(result: dict[str, Any]) -> dict[str, Any]:
    losses = result["losses"]
    return {
        "samples": result["samples"],
        "batches": result["batches"],
        "loss": sum(losses) / len(losses) if losses else float("nan"),
        "seconds": result["seconds"],
    }


# ---- the `tether train` command --------------------------------------------------------------

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
    from tether.federated.partition import parse_label_groups

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
        from tether.transports.websocket import connect
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


if __name__ == "__main__":  # python -m tether.federated.coordinator (as `tether train`)
    _parser = argparse.ArgumentParser(prog="tether train", description=__doc__)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
