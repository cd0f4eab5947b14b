"""Shared fixtures. `make_worker` runs a test against every transport a worker can have."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether as sy

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-sample"
TRANSPORTS = ["virtual", "virtual-direct"]


@pytest.fixture(params=TRANSPORTS)
def make_worker(request: pytest.FixtureRequest) -> Iterator[Callable[[str], object]]:
    """A factory of workers over one transport: `virtual` (through the codec), `virtual-direct`
    (codec skipped)."""
    made = []

    def make(name: str = "bob") -> object:
        worker = sy.VirtualWorker(id=name, serialize=request.param == "virtual")
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.client.close()


@pytest.fixture
def bob(make_worker):
    return make_worker("bob")


@pytest.fixture
def alice(make_worker):
    return make_worker("alice")
