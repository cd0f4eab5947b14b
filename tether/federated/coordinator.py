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

Long because it is the whole round loop of a deployment: who is in a round, their jobs, the
strategy's steps, evaluation, checkpoints and what the user is told, which read best in one
place; the strategies, the calls to the workers and the report live in their own modules.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tether.errors import ConnectionLostError, FederationError, ObjectNotFoundError, TetherError
from tether.federated import report
from tether.federated.checkpoint import Checkpoint, fingerprint
from tether.federated.delegated import modelspec
from tether.federated.delegated.remote import (
    dataset_pointers,
    remote_evaluate,
    remote_fit,
    remote_secure_fit,
)
from tether.federated.delegated.training import EvalConfig, TrainConfig
from tether.federated.report import TUTORIAL_GROUPS
from tether.federated.secure import Kept, RoundTooSmall, SecureAggregation, SecureRound
from tether.federated.strategies import FedAvg, Strategy, Task, Update
from tether.federated.strategies.base import Sum
from tether.privacy.secagg import RoundAborted, Setup

Log = Callable[[str], None]

__all__ = ["Coordinator", "FederationError", "FederationResult", "Log"]


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
class _Participant:
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


def _participant(name: str, worker: Any) -> _Participant:
    if hasattr(worker, "client"):
        return _Participant(name, handle=worker)
    if callable(worker):
        return _Participant(name, connect=worker)
    raise TypeError(
        f"worker {name!r} must be a worker (with .client) or a function that "
        f"connects to one, got {type(worker).__name__}"
    )


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
    is called once the round's jobs are out (to inject faults in demos and tests).

    `secure_aggregation`: True (or `SecureAggregation(threshold=..., clip=...)`) to learn only
    the weighted sum of the workers' moves each round (tether.federated.secure); the strategy
    then steps from it (`aggregate_sum`), the evaluator scores only the federated model, and
    `on_secure_step(r, step)` is called after each of the protocol's steps ("advertised",
    "shared", "masked", "unmasked")."""

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
        strategy: Strategy | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        log: Log = print,
        progress: bool = False,
        on_round_start: Callable[[int], None] | None = None,
        secure_aggregation: bool | SecureAggregation = False,
        on_secure_step: Callable[[int, str], None] | None = None,
    ) -> None:
        if not workers:
            raise ValueError("a federation needs at least one worker")
        if not 1 <= min_workers <= len(workers):
            raise ValueError(
                f"min_workers must be between 1 and {len(workers)} (the workers "
                f"given), got {min_workers}"
            )
        for name, value in (("rounds", rounds), ("eval_every", eval_every)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if rounds < 1 or eval_every < 1 or round_timeout <= 0:
            raise ValueError("rounds and eval_every must be >= 1 and round_timeout > 0")
        self.model = model
        self.participants = [_participant(name, worker) for name, worker in workers.items()]
        self.evaluator = None if evaluator is None else _participant("evaluator", evaluator)
        self.config = TrainConfig.parse(config or {})
        self.eval_config = EvalConfig.parse(eval_config or {})
        self.rounds, self.eval_every, self.min_workers = rounds, eval_every, min_workers
        self.round_timeout = round_timeout
        self.dataset_key, self.test_key = dataset_key, test_key
        self.groups = [tuple(g) for g in groups]
        self.strategy = strategy if strategy is not None else FedAvg()
        self.secure = SecureAggregation.parse(secure_aggregation)
        if self.secure is not None:
            self.secure.check(self.strategy)
        self.on_secure_step = on_secure_step
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume = resume
        self.log = log
        self.progress = progress
        self.on_round_start = on_round_start
        self.spec = modelspec.describe(model)
        self.state: dict[str, torch.Tensor] = dict(self.spec["state"])
        self.history: list[dict[str, Any]] = []
        self._setup: Setup | None = None  # this round's, under secure aggregation

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
        updates, left_out, sampled_none = self._train(r)
        secure = self.secure is not None and bool(updates)  # DP-FedAvg may sample nobody
        total = self._secure_sum(r, updates, left_out) if secure else None
        record: dict[str, Any] = {
            "round": r,
            "workers": list(updates),
            "left_out": left_out,
            "train": {name: _train_metrics(result) for name, result in updates.items()},
        }
        if total is not None:
            record["clients"] = total.clients
        for name, why in left_out.items():
            self.log(f"Round {r}: worker {name} left out ({why})")
        for name, train in record["train"].items():
            if "epsilon" in train:  # it trained with DP
                self.log(report.privacy_line(r, name, train))
        if len(updates) < self.min_workers and not sampled_none:
            raise FederationError(self._too_few(r, updates, left_out))
        if total is not None:
            self.state = self.strategy.aggregate_sum(r, total, self.state)
        else:
            ordered = [
                Update(
                    name,
                    result["weights"],
                    result["samples"],
                    result["batches"],
                    result.get("within_clip") if type(result.get("within_clip")) is bool else None,
                )
                for name, result in updates.items()
            ]
            self.state = self.strategy.aggregate(r, ordered, self.state)
        record.update(self.strategy.record())
        if "epsilon" in record:  # the strategy is differentially private (DP-FedAvg)
            self.log(report.strategy_privacy_line(r, record))
        record["train_seconds"] = time.perf_counter() - start
        if self._evaluates(r):
            record["eval"] = self._evaluate(r, updates)
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self._checkpoint(r)

    def _evaluates(self, r: int) -> bool:
        return self.evaluator is not None and ((r - 1) % self.eval_every == 0 or r == self.rounds)

    # ---- training on the workers ------------------------------------------------------------

    def _train(self, r: int) -> tuple[dict[str, dict], dict[str, str], bool]:
        """The workers the strategy samples train at once; the answers within the round
        timeout, and whether the strategy sampled none of the available workers (DP-FedAvg's
        Poisson sampling may: the round then aggregates no update)."""
        spec = modelspec.with_state(self.spec, self.state)
        jobs: dict[str, _Job] = {}
        left_out: dict[str, str] = {}
        available: list[str] = []
        for participant in self.participants:
            if participant.refused is not None:
                continue
            if participant.busy is not None and participant.busy.running():
                left_out[participant.name] = f"still busy with round {participant.busy.round}"
                continue
            available.append(participant.name)
        chosen = set(
            self.strategy.sample(r, available, random.Random(round_seed(self.config.seed, r, -1)))
        )
        self._setup = self._secure_setup(r, len(chosen)) if self.secure is not None else None
        for i, participant in enumerate(self.participants):
            if participant.name not in chosen:
                continue
            config = replace(self.config, seed=round_seed(self.config.seed, r, i))
            task = self.strategy.configure(r, participant.name, config)
            jobs[participant.name] = participant.busy = self._start(participant, r, spec, task)
        if self.on_round_start is not None:
            self.on_round_start(r)
        deadline = time.monotonic() + self.round_timeout
        updates: dict[str, dict] = {}
        for participant in self.participants:
            job = jobs.get(participant.name)
            if job is None:
                continue
            assert job.thread is not None
            job.thread.join(max(deadline - time.monotonic(), 0.0))
            if job.running():
                left_out[participant.name] = f"missed the round timeout of {self.round_timeout:g} s"
            elif job.error is not None:
                left_out[participant.name] = self._failed(participant, job.error)
            else:
                assert job.result is not None
                updates[participant.name] = job.result
        for name in left_out:
            next(
                participant for participant in self.participants if participant.name == name
            ).missed.append(r)
        return updates, left_out, bool(available) and not chosen

    def _start(self, participant: _Participant, r: int, spec: dict, task: Task) -> _Job:
        job = _Job(r)
        setup = self._setup

        def work() -> None:
            try:
                client, dataset = participant.client(), participant.pointers(self.dataset_key)
                if setup is None:
                    job.result = remote_fit(client, dataset, spec, task.config, task.correction)
                    return
                pointer, receipt = remote_secure_fit(
                    client,
                    dataset,
                    spec,
                    task.config,
                    setup.to_dict(),
                    participant.name,
                    self.strategy.weigh_by_samples,
                )
                job.result = {**receipt, "kept": Kept(client, pointer, receipt)}
            except BaseException as exc:  # reported by the round, never lost in the thread
                job.error = exc

        job.thread = threading.Thread(target=work, name=f"fit-{participant.name}-{r}", daemon=True)
        job.thread.start()
        return job

    def _failed(self, participant: _Participant, error: BaseException) -> str:
        """Why a worker is left out. Lost connections are tried again next round (a new
        connection is a new session: the dataset is looked up again); a worker that answered
        with a refusal would refuse again, so it is dropped."""
        if isinstance(error, ConnectionLostError | ObjectNotFoundError) or not isinstance(
            error, TetherError
        ):
            participant.dataset = None
            return f"unreachable: {error}"
        participant.refused = str(error)
        self.log(f"Worker {participant.name} refused the job and is left out from now on: {error}")
        return f"refused: {error}"

    def _too_few(self, r: int, updates: Mapping[str, Any], left_out: Mapping[str, str]) -> str:
        answered = ", ".join(updates) or "none"
        reasons = {
            participant.name: f"refused: {participant.refused}"
            for participant in self.participants
            if participant.refused
        }
        why = "; ".join(f"{name}: {reason}" for name, reason in {**reasons, **left_out}.items())
        where = (
            f" The checkpoint of round {r - 1} is in {self.checkpoint_dir}: fix the "
            "workers and run again with --resume."
            if self.checkpoint_dir and r > 1
            else ""
        )
        return (
            f"round {r}: {len(updates)} of {len(self.participants)} workers answered ({answered}), "
            f"fewer than min_workers={self.min_workers}. Left out: {why}.{where}"
        )

    # ---- secure aggregation -----------------------------------------------------------------

    def _secure_setup(self, r: int, workers: int) -> Setup:
        assert self.secure is not None
        try:
            return self.secure.setup(workers, self.strategy, self.config)
        except RoundTooSmall as exc:
            raise FederationError(f"round {r}: {exc}") from None

    def _secure_sum(self, r: int, trained: dict[str, dict], left_out: dict[str, str]) -> Sum:
        """Run the protocol across the workers that trained (leaving in `trained` only the
        survivors'); their `Sum`. FederationError when it aborts: nothing is unmasked."""
        assert self._setup is not None and self.secure is not None
        hook = self.on_secure_step
        secure = SecureRound(
            self._setup,
            self.state,
            {name: result["kept"] for name, result in trained.items()},
            self.secure.step_timeout or self.round_timeout,
            (lambda step: hook(r, step)) if hook is not None else lambda step: None,
        )
        try:
            total = secure.run()
        except RoundAborted as exc:
            left_out.update(secure.left_out)
            why = "; ".join(f"{name}: {reason}" for name, reason in left_out.items())
            raise FederationError(
                f"round {r}: secure aggregation aborted, nothing was unmasked: {exc}"
                + (f". Left out: {why}" if why else "")
            ) from None
        left_out.update(secure.left_out)
        for name in set(trained) - set(secure.aggregation.survivors):
            del trained[name]
        return total

    # ---- evaluation -------------------------------------------------------------------------

    def _evaluate(self, r: int, updates: Mapping[str, dict]) -> dict[str, dict]:
        self.log("Evaluating models")
        specs = {
            f"Model update {name}": modelspec.with_state(self.spec, result["weights"])
            for name, result in updates.items()
            if "weights" in result  # a secure round has no worker's own weights
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

    def _checkpoint(self, r: int) -> None:
        if self.checkpoint_dir is not None:
            self._checkpoints(self.checkpoint_dir).save(
                r, self.rounds, self.state, self.history, self.strategy
            )

    def _restore(self) -> int:
        """Load the checkpoint; the last round it completed (0 when there is none)."""
        if self.checkpoint_dir is None:
            raise FederationError("resume needs a checkpoint directory")
        found = self._checkpoints(self.checkpoint_dir).load(self.state.keys(), self.strategy)
        if found is None:
            self.log(f"No checkpoint in {self.checkpoint_dir}: starting at round 1")
            return 0
        r, self.state, self.history = found
        self.log(f"Resuming after round {r} from {self.checkpoint_dir}")
        return r

    def checkpointed_round(self) -> int | None:
        """The round the checkpoint on disk holds; None without a checkpoint directory or one."""
        if self.checkpoint_dir is None:
            return None
        return self._checkpoints(self.checkpoint_dir).round()

    def _checkpoints(self, directory: Path) -> Checkpoint:
        return Checkpoint(directory, fingerprint(self.spec, self.config.to_dict()))

    # ---- what the user sees -----------------------------------------------------------------

    def _postfix(self) -> str:
        last = self.history[-1] if self.history else None
        if last is None:
            return ""
        federated = last.get("eval", {}).get(report.FEDERATED)
        accuracy = f" acc {100 * federated['accuracy']:.1f}%" if federated else ""
        return f"{len(last['workers'])} workers{accuracy}"

    def _summary(self) -> None:
        for participant in self.participants:
            if participant.refused is not None:
                self.log(
                    f"Worker {participant.name} was left out after refusing: {participant.refused}"
                )
            elif participant.missed:
                rounds = ", ".join(str(r) for r in participant.missed)
                self.log(
                    f"Worker {participant.name} missed round(s) {rounds}; the others ran without it"
                )


def round_seed(seed: int, r: int, index: int) -> int:
    """A different batch order for every round and worker, the same on every run (and resume)."""
    return seed * 1_000_003 + r * 1009 + index


def _train_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """A worker's metrics for the round's record, with the ε it spent if it trained with DP
    (in a secure round, only its seconds and ε: the rest would tell of its data)."""
    metrics: dict[str, Any] = {}
    if "losses" in result:
        losses = result["losses"]
        metrics = {
            "samples": result["samples"],
            "batches": result["batches"],
            "loss": sum(losses) / len(losses) if losses else float("nan"),
        }
    metrics["seconds"] = result["seconds"]
    privacy = result.get("privacy")
    if isinstance(privacy, dict) and all(type(privacy.get(k)) is float for k in report.SPENT):
        metrics.update({k: privacy[k] for k in report.SPENT})
    return metrics
