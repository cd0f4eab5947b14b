"""tether: train and analyse PyTorch models on data you cannot see.

`import tether as sy` gives the names the PySyft tutorials use: `TorchHook`, `VirtualWorker`,
`tensor.send(worker)`, `ptr.get()`, `model.send(worker)` / `model.get()`.
"""

from tether import datasets, errors, transforms
from tether.errors import (
    NotAllowedError,
    ObjectNotFoundError,
    PermissionDeniedError,
    RemoteError,
    TetherError,
    WireError,
    WorkerMismatchError,
)
from tether.federated import FederatedDataLoader, FederatedDataset, Optims, federate
from tether.hook import TorchHook, install
from tether.pointer import Pointer, PointerTensor, get_all
from tether.split import SplitNN
from tether.workers import VirtualWorker

install()

__all__ = [
    "FederatedDataLoader",
    "FederatedDataset",
    "NotAllowedError",
    "ObjectNotFoundError",
    "Optims",
    "PermissionDeniedError",
    "Pointer",
    "PointerTensor",
    "RemoteError",
    "SplitNN",
    "TetherError",
    "TorchHook",
    "VirtualWorker",
    "WireError",
    "WorkerMismatchError",
    "datasets",
    "errors",
    "federate",
    "get_all",
    "transforms",
]
