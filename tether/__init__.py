"""tether: train and analyse PyTorch models on data you cannot see.

`import tether as sy` gives the names the PySyft tutorials use: `TorchHook`, `VirtualWorker`,
`tensor.send(worker)`, `ptr.get()`, `model.send(worker)` / `model.get()`.
"""

from tether import datasets, errors, federated, transforms
from tether.cli.version import __version__ as __version__
from tether.duet import Module, join_duet, launch_duet
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
from tether.remote import Pointer, PointerTensor, TorchHook, Worker, get_all, install
from tether.split import SplitNN
from tether.transports.inprocess import VirtualWorker
from tether.transports.websocket import WebsocketClientWorker, connect

install()  # Tensor.send, Module.send/get, remote optimizer steps
federated.install()  # Dataset.federate

__all__ = [
    "FederatedDataLoader",
    "FederatedDataset",
    "Module",
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
    "WebsocketClientWorker",
    "WireError",
    "Worker",
    "WorkerMismatchError",
    "connect",
    "datasets",
    "errors",
    "federate",
    "get_all",
    "join_duet",
    "launch_duet",
    "transforms",
]
