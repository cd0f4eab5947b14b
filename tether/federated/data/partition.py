"""Ways to split a dataset among workers, as lists of sample indices.

Federated learning is studied under different splits: IID, each worker owning some digits,
or label skew of tunable strength. Every partitioner is a pure function of the targets and a
seed, and draws from its own generator, so it never moves torch's global random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Partitioner = Callable[[Any], list[torch.Tensor]]

_SPEC_FORMS = (
    "'iid:N', 'labels:0-3/4-6/7-9', 'dirichlet:N:ALPHA', 'shards:N:K' or 'labels-per-client:N:K'"
)
# How many arguments each kind of spec takes (all but 'labels' start with the worker count).
SPEC_ARGS = {"iid": 1, "labels": 1, "dirichlet": 2, "shards": 2, "labels-per-client": 2}


def iid(n_samples: int, num_parts: int, seed: int = 0) -> list[torch.Tensor]:
    """Shuffle `n_samples` indices and cut them into `num_parts` near-equal parts.

    Each part is sorted, so samples keep their original order within a worker.
    """
    _check_parts(num_parts, n_samples)
    perm = torch.randperm(n_samples, generator=_generator(seed))
    return [part.sort().values for part in torch.tensor_split(perm, num_parts)]


def by_label_groups(targets: Any, groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Part i holds every sample whose label is in `groups[i]`, in original order.

    Labels in no group are left out; a label may not be in two groups.
    """
    targets = _as_targets(targets)
    if not groups:
        raise ValueError("by_label_groups needs at least one group of labels")
    seen: set[int] = set()
    parts = []
    for group in groups:
        labels = [int(label) for label in group]
        if not labels:
            raise ValueError(f"empty label group in {groups}")
        if repeated := seen.intersection(labels):
            raise ValueError(f"labels {sorted(repeated)} appear in more than one group")
        seen.update(labels)
        part = torch.isin(targets, torch.tensor(labels)).nonzero().flatten()
        if len(part) == 0:
            raise ValueError(f"no sample has a label in the group {labels}")
        parts.append(part)
    return parts


def dirichlet(
    targets: Any, num_parts: int, alpha: float, seed: int = 0, min_size: int = 10
) -> list[torch.Tensor]:
    """Label skew: each label's samples are split with proportions drawn from Dir(alpha).

    Large alpha (100+) approaches IID; small alpha (0.1 and below) gives each worker only a
    few labels. Draws are repeated until every part has at least `min_size` samples.
    Each part is sorted (original order).
    """
    targets = _as_targets(targets)
    _check_parts(num_parts, len(targets))
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_size * num_parts > len(targets):
        raise ValueError(
            f"cannot give {num_parts} parts at least {min_size} samples each "
            f"out of {len(targets)}; lower min_size"
        )
    # torch's Dirichlet sampler has no generator argument, so draws come from numpy's.
    rng = np.random.default_rng(seed)
    labels = targets.numpy()
    by_label = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
        for idx in by_label:
            idx = rng.permutation(idx)
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_parts))[:-1] * len(idx)).astype(int)
            for part, piece in zip(parts, np.split(idx, cuts), strict=True):
                part.append(piece)
        sizes = [sum(len(piece) for piece in part) for part in parts]
        if min(sizes) >= min_size:
            return [torch.from_numpy(np.sort(np.concatenate(part))) for part in parts]
    raise ValueError(
        f"no Dirichlet draw with alpha={alpha} gave all {num_parts} parts {min_size} samples "
        "in 1000 tries; raise alpha or lower min_size"
    )


def shards(targets: Any, num_parts: int, shards_per_part: int, seed: int = 0) -> list[torch.Tensor]:
    """McMahan et al.'s pathological non-IID split: sort by label, cut into shards, deal.

    The label-sorted indices are cut into `num_parts * shards_per_part` near-equal shards and
    each part gets `shards_per_part` of them at random, so it sees only a few labels. A part's
    indices come shard after shard, each shard in label order.
    """
    targets = _as_targets(targets)
    _check_parts(num_parts, len(targets))
    if shards_per_part < 1:
        raise ValueError(f"shards_per_part must be >= 1, got {shards_per_part}")
    if num_parts * shards_per_part > len(targets):
        raise ValueError(
            f"cannot cut {len(targets)} samples into {num_parts * shards_per_part} shards"
        )
    order = torch.argsort(targets, stable=True)
    pieces = torch.tensor_split(order, num_parts * shards_per_part)
    dealt = torch.randperm(len(pieces), generator=_generator(seed)).view(num_parts, -1)
    return [torch.cat([pieces[int(s)] for s in row]) for row in dealt]


def labels_per_client(
    targets: Any, num_parts: int, labels: int, seed: int = 0
) -> list[torch.Tensor]:
    """NIID-Bench's quantity-based label skew (#C=k, Li et al. 2021): each part holds `labels`
    distinct labels, and each label's samples are split evenly among the parts holding it.

    Part i is given label `i mod C` (C: the number of labels), so every label is held while
    there are at least C parts, then `labels - 1` others drawn at random. A label no part
    holds is left out. Each part is sorted (original order).
    """
    targets = _as_targets(targets)
    _check_parts(num_parts, len(targets))
    present = torch.unique(targets)
    if not 1 <= labels <= len(present):
        raise ValueError(
            f"labels per part must be between 1 and {len(present)} (the labels present), "
            f"got {labels}"
        )
    generator = _generator(seed)
    held: list[list[int]] = []
    for i in range(num_parts):
        first = int(present[i % len(present)])
        others = [int(c) for c in present[torch.randperm(len(present), generator=generator)]]
        held.append([first, *[c for c in others if c != first][: labels - 1]])
    pieces: list[list[torch.Tensor]] = [[] for _ in range(num_parts)]
    for label in present.tolist():
        holders = [i for i, own in enumerate(held) if label in own]
        if not holders:
            continue
        where = (targets == label).nonzero().flatten()
        where = where[torch.randperm(len(where), generator=generator)]
        for i, piece in zip(holders, torch.tensor_split(where, len(holders)), strict=True):
            pieces[i].append(piece)
    parts = [torch.cat(p).sort().values for p in pieces]
    if empty := [i for i, part in enumerate(parts) if len(part) == 0]:
        raise ValueError(
            f"parts {empty[:5]} got no samples: {len(targets)} samples are too few for "
            f"{num_parts} parts of {labels} label(s) each"
        )
    return parts


def parse_label_range(text: str) -> list[int]:
    """Parse '0-3' into [0, 1, 2, 3], '0,2,5' into [0, 2, 5], and mixes like '0-2,7'."""
    labels: list[int] = []
    for item in text.split(","):
        lo, dash, hi = item.strip().partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            raise ValueError(
                f"bad label list {text!r}: use ranges and numbers like '0-3' or '0,2,5'"
            ) from None
        if first < 0 or last < first:
            raise ValueError(f"bad label range {item.strip()!r} in {text!r}")
        labels.extend(range(first, last + 1))
    return labels


def parse_label_groups(text: str) -> list[list[int]]:
    """Parse '0-3/4-6/7-9' into one list of labels per worker."""
    return [parse_label_range(group) for group in text.split("/")]


def with_count(spec: str, num_parts: int) -> str:
    """The spec with the worker count put in when it was left out ('dirichlet:0.5' for 10
    workers: 'dirichlet:10:0.5'); a spec that has it, or a 'labels' spec, is kept."""
    kind, _, rest = spec.strip().partition(":")
    given = len(rest.split(":")) if rest else 0
    if kind != "labels" and given < SPEC_ARGS.get(kind, 0):
        return f"{kind}:{num_parts}" + (f":{rest}" if rest else "")
    return spec


def parse_spec(spec: str, seed: int = 0) -> Partitioner:
    """Turn a command-line spec into a partitioner `targets -> list of index tensors`.

    Forms: 'iid:N', 'labels:0-3/4-6/7-9' (one group of labels per worker),
    'dirichlet:N:ALPHA', 'shards:N:K' (K shards per worker) and 'labels-per-client:N:K' (K
    labels per worker, NIID-Bench's #C=K).
    """
    kind, _, rest = spec.strip().partition(":")
    args = rest.split(":") if rest else []

    def bad(why: str) -> ValueError:
        return ValueError(f"bad partition spec {spec!r}: {why}; expected {_SPEC_FORMS}")

    def number(text: str, cast: Callable[[str], Any], name: str) -> Any:
        try:
            return cast(text)
        except ValueError:
            raise bad(f"{name} must be a number, got {text!r}") from None

    if kind not in SPEC_ARGS:
        raise bad(f"unknown kind {kind!r}")
    if len(args) != SPEC_ARGS[kind]:
        raise bad(f"'{kind}' takes {SPEC_ARGS[kind]} argument(s), got {len(args)}")
    if kind == "labels":
        try:
            groups = parse_label_groups(args[0])
        except ValueError as e:
            raise bad(str(e)) from None
        return lambda targets: by_label_groups(targets, groups)
    num_parts = number(args[0], int, "the number of workers")
    if num_parts < 1:
        raise bad(f"the number of workers must be >= 1, got {num_parts}")
    if kind == "iid":
        return lambda targets: iid(len(targets), num_parts, seed)
    if kind == "dirichlet":
        alpha = number(args[1], float, "alpha")
        if not alpha > 0:
            raise bad(f"alpha must be > 0, got {alpha}")
        return lambda targets: dirichlet(targets, num_parts, alpha, seed)
    if kind == "labels-per-client":
        per_client = number(args[1], int, "the number of labels per worker")
        if per_client < 1:
            raise bad(f"the number of labels per worker must be >= 1, got {per_client}")
        return lambda targets: labels_per_client(targets, num_parts, per_client, seed)
    per_part = number(args[1], int, "the number of shards per worker")
    if per_part < 1:
        raise bad(f"the number of shards per worker must be >= 1, got {per_part}")
    return lambda targets: shards(targets, num_parts, per_part, seed)


def label_counts(
    targets: Any, parts: Sequence[torch.Tensor], num_classes: int | None = None
) -> torch.Tensor:
    """A num_parts x num_classes tensor: how many samples of each label each part holds."""
    targets = _as_targets(targets)
    if num_classes is None:
        num_classes = int(targets.max()) + 1 if len(targets) else 0
    return torch.stack([torch.bincount(targets[part], minlength=num_classes) for part in parts])


def format_label_table(
    targets: Any, parts: Sequence[torch.Tensor], names: Sequence[str] | None = None
) -> str:
    """A text table of label counts: one row per worker, one column per label, with totals."""
    counts = label_counts(targets, parts)
    if names is None:
        names = [f"worker{i}" for i in range(len(parts))]
    if len(names) != len(parts):
        raise ValueError(f"{len(names)} names given for {len(parts)} parts")
    header = ["worker", *(str(c) for c in range(counts.shape[1])), "total"]
    rows = [
        [str(name), *(str(int(v)) for v in row), str(int(row.sum()))]
        for name, row in zip(names, counts, strict=True)
    ]
    rows.append(["total", *(str(int(v)) for v in counts.sum(0)), str(int(counts.sum()))])
    table = [header, *rows]
    widths = [max(len(row[j]) for row in table) for j in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if j == 0 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    )


def _generator(seed: int) -> torch.Generator:
    """A private generator, so partitioning leaves torch's global RNG untouched."""
    return torch.Generator().manual_seed(seed)


def _as_targets(targets: Any) -> torch.Tensor:
    """Targets as a 1-D int64 tensor; labels must be integers."""
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.is_floating_point() or targets.is_complex():
        raise ValueError(
            f"targets must be a 1-D tensor of integer labels, got {targets.dtype} "
            f"of shape {tuple(targets.shape)}"
        )
    if len(targets) and targets.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(targets.min())}")
    return targets.to(torch.int64)


def _check_parts(num_parts: int, n_samples: int) -> None:
    if num_parts < 1:
        raise ValueError(f"the number of parts must be >= 1, got {num_parts}")
    if num_parts > n_samples:
        raise ValueError(f"cannot cut {n_samples} samples into {num_parts} non-empty parts")
