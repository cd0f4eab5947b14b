"""PySyft's sandbox: `sy.create_sandbox(globals())` makes the tutorials' workers, and gives
them data to search for through a grid (`PrivateGridNetwork`, as far as the tutorials use
PySyft's grid: `grid.search(*tags)` over workers in this process; serving models on a grid is
not in tether).

It is smaller than PySyft's: of the scikit-learn and TensorFlow datasets PySyft's sandbox
loaded, it loads the one a tutorial uses (Part 07), Boston house prices, from the copy inside
tether (`tether.datasets.boston`): nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch

from tether.datasets.boston import load_boston
from tether.remote.hook import TorchHook
from tether.remote.pointer import Pointer
from tether.transports.inprocess import VirtualWorker

WORKERS = ("bob", "theo", "jason", "alice", "andy", "jon")  # PySyft's, in its order
BOSTON_TAGS = ("#boston", "#housing", "#boston_housing")
BOSTON_DESCRIPTION = (
    "Boston house prices (Harrison and Rubinfeld, 1978), as scikit-learn shipped them: "
    "see tether/datasets/boston_housing/README.md, and do not build anything on it"
)


class PrivateGridNetwork:
    """`sy.PrivateGridNetwork(bob, alice, ...)`: searches its workers' published objects by tag."""

    def __init__(self, *workers: Any) -> None:
        for worker in workers:
            if not callable(getattr(worker, "search", None)):
                raise TypeError(
                    f"a grid searches workers in this process (VirtualWorker), not {worker!r}: "
                    "reach a network worker's data with worker.dataset(key)"
                )
        self.workers = list(workers)

    def search(self, *query: str) -> dict[str, list[Pointer]]:
        """Pointers to the objects that carry every tag of `query`, by the id of the worker
        holding them (workers holding none are left out), as PySyft's grid answered."""
        found = {worker.id: worker.search(*query) for worker in self.workers}
        return {worker_id: pointers for worker_id, pointers in found.items() if pointers}


def create_sandbox(gbs: dict[str, Any], verbose: bool = True, download_data: bool = True) -> None:
    """Put PySyft's sandbox into `gbs` (a notebook's `globals()`): `hook`, six VirtualWorkers
    (`bob`, `theo`, `jason`, `alice`, `andy`, `jon`), `workers` (the list of them) and `grid`
    (a `PrivateGridNetwork` of them). With `download_data` (the name is PySyft's: the data
    ships with tether) each worker's owner holds a part of the Boston house prices, its
    samples tagged #boston #housing #boston_housing #data and its prices #target, as float32:
    `grid.search("#boston", "#data")`. The parts are cut as PySyft cut them: equal, in order,
    the last one taking the remainder."""
    print("Setting up Sandbox...")
    hook = TorchHook(torch)
    workers = [VirtualWorker(hook, id=name) for name in WORKERS]
    if verbose:
        print("\t- Creating Virtual Workers: " + ", ".join(WORKERS))
    gbs["hook"] = hook
    gbs.update(zip(WORKERS, workers, strict=True))
    gbs["workers"] = workers
    if download_data:
        if verbose:
            print("\t- Boston house prices, distributed amongst the workers")
        data, target = load_boston()
        for values, tag in ((data, "#data"), (target, "#target")):
            _distribute(values.float(), workers, "boston/" + tag.lstrip("#"), (*BOSTON_TAGS, tag))
    gbs["grid"] = PrivateGridNetwork(*workers)
    print("Done!")


def _distribute(values: torch.Tensor, workers: list[VirtualWorker], key: str, tags: tuple) -> None:
    """Give each worker's owner its part of `values`, published under `key` with `tags`."""
    size = len(values) // len(workers)
    for i, worker in enumerate(workers):
        end = None if i == len(workers) - 1 else (i + 1) * size
        worker.publish(key, values[i * size : end], tags=tags, description=BOSTON_DESCRIPTION)
