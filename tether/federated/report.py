"""What a federated run shows a person: the tutorial's report lines, metrics files, a plot."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Groups = Sequence[Sequence[int]]
# The websocket tutorial's label groups: each of its three workers holds one.
TUTORIAL_GROUPS = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))


def group_label(group: Sequence[int]) -> str:
    """[0, 1, 2, 3] -> "0-3"; [0, 2, 5] -> "0,2,5"."""
    ordered = sorted(group)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(str(label) for label in ordered)


def group_shares(predicted: Sequence[int], groups: Groups) -> list[float]:
    """The share of all predictions that fall in each label group."""
    total = sum(predicted) or 1
    return [
        sum(predicted[label] for label in group if label < len(predicted)) / total
        for group in groups
    ]


def evaluation_lines(name: str, result: dict[str, Any], groups: Groups) -> list[str]:
    """The websocket tutorial's two lines for one evaluated model."""
    shares = ", ".join(
        f"{group_label(g)}: {share:.0%}"
        for g, share in zip(groups, group_shares(result["predicted"], groups), strict=True)
    )
    return [
        f"{name}: Percentage numbers {shares}",
        f"{name}: Average loss: {result['loss']:.4f}, Accuracy: {result['correct']}/"
        f"{result['samples']} ({100 * result['accuracy']:.2f}%)",
    ]


# What a worker that trained with DP says it spent (its fit result's `privacy`).
SPENT = ("epsilon", "epsilon_total", "delta")


def privacy_line(r: int, worker: str, train: dict[str, Any]) -> str:
    """What a worker spent in round r, for `tether train`'s output."""
    return (
        f"Round {r}: worker {worker} spent ε = {train['epsilon']:.4g} "
        f"(ε = {train['epsilon_total']:.4g} in total, δ = {train['delta']:g})"
    )


def strategy_privacy_line(r: int, record: dict[str, Any]) -> str:
    """What a differentially private strategy (DP-FedAvg) has spent after round r."""
    return (
        f"Round {r}: DP-FedAvg has spent ε = {record['epsilon']:.4g} in total "
        f"(δ = {record['delta']:g}, clipping norm {record['clip_norm']:.4g}, noise multiplier "
        f"{record['noise_multiplier']:g})"
    )


def rows(history: Sequence[dict[str, Any]], groups: Groups) -> list[dict[str, Any]]:
    """One flat row per (round, model) for tables: per round, training rows, the workers left
    out (and why), then evaluation rows."""
    out = []
    for record in history:
        base = {"round": record["round"], "round_seconds": record["seconds"]}
        if "epsilon" in record:  # a differentially private strategy's ε so far
            base["strategy_epsilon"] = record["epsilon"]
        for worker, train in record["train"].items():
            out.append(
                {
                    **base,
                    "kind": "train",
                    "model": worker,
                    "samples": train.get("samples"),  # a secure round keeps them hidden
                    "loss": train.get("loss"),
                    "seconds": train["seconds"],
                    **{k: train[k] for k in ("epsilon", "epsilon_total") if k in train},
                }
            )
        for worker, why in record["left_out"].items():
            out.append({**base, "kind": "left_out", "model": worker, "reason": why})
        for model, result in record.get("eval", {}).items():
            shares = group_shares(result["predicted"], groups)
            out.append(
                {
                    **base,
                    "kind": "eval",
                    "model": model,
                    "accuracy": result["accuracy"],
                    "loss": result["loss"],
                    "samples": result["samples"],
                    "seconds": result["seconds"],
                    **{f"share_{group_label(g)}": s for g, s in zip(groups, shares, strict=True)},
                }
            )
    return out


def save_metrics(history: Sequence[dict[str, Any]], groups: Groups, out_dir: Path) -> list[Path]:
    """metrics.json (the full history) and metrics.csv (one row per round and model)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "metrics.json", out_dir / "metrics.csv"
    write_atomic(
        json_path,
        lambda f: f.write(
            json.dumps(
                {"groups": [list(g) for g in groups], "rounds": list(history)}, indent=1
            ).encode()
        ),
    )
    table = pd.DataFrame(rows(history, groups)).convert_dtypes()
    write_atomic(csv_path, lambda f: table.to_csv(f, index=False))
    return [json_path, csv_path]


def plot_accuracy(
    history: Sequence[dict[str, Any]], path: Path, title: str = "Test accuracy per round"
) -> Path:
    """A PNG of each evaluated model's test accuracy against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in history:
        for model, result in record.get("eval", {}).items():
            xs, ys = series.setdefault(model, ([], []))
            xs.append(record["round"])
            ys.append(100 * result["accuracy"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, (xs, ys) in series.items():
        federated = model == FEDERATED
        ax.plot(
            xs,
            ys,
            marker="o",
            linewidth=2.5 if federated else 1.2,
            linestyle="-" if federated else "--",
            label=model,
        )
    ax.set(xlabel="round", ylabel="accuracy on the test set (%)", title=title, ylim=(0, 100))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no model was evaluated", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


FEDERATED = "Federated model"


def write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """Write a file so that it is either the old one or the complete new one, never half:
    into a temporary file beside it, then `os.replace`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
