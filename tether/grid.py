"""PySyft's grid, as far as its tutorials use it: `grid.search(*tags)` over workers in this
process, for the sandbox (`tether.sandbox`). Serving models on a grid is not in tether."""

from __future__ import annotations

from typing import Any

from tether.remote.pointer import Pointer


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
