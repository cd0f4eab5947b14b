"""The Boston house prices dataset, read from the copy inside the package (see
`boston_housing/README.md` for where it comes from, and why scikit-learn removed it): only so
that PySyft's Part 07 runs offline, through `tether.create_sandbox`."""

from __future__ import annotations

import csv
from importlib import resources

import torch

FILE = "boston_house_prices.csv"


def load_boston() -> tuple[torch.Tensor, torch.Tensor]:
    """`(data, target)`: 506 samples of 13 features, and each one's median house value in
    $1000s (float64, as `sklearn.datasets.load_boston` gave them)."""
    with resources.files(__package__).joinpath("boston_housing", FILE).open() as f:
        rows = csv.reader(f)
        n_samples, n_features = (int(n) for n in next(rows)[:2])
        next(rows)  # the features' names
        values = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    if values.shape != (n_samples, n_features + 1):
        raise ValueError(f"{FILE} holds {tuple(values.shape)} values, not {n_samples} rows")
    return values[:, :-1].contiguous(), values[:, -1].contiguous()
