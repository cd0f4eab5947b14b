"""The scientist's side: pointers, the client that queues commands and matches replies, the
torch hook (`tensor.send`, `model.send/get`), worker handles and cross-worker autograd.

Importing this package imports `autograd` and `chain`, which hook themselves into the pointer
from above.
"""

from tether.remote import autograd, chain
from tether.remote.chain import PointerChain
from tether.remote.client import Client, client_of
from tether.remote.hook import TorchHook, install
from tether.remote.pointer import (
    LOCAL_WORKER,
    LocalWorker,
    Pointer,
    PointerTensor,
    get_all,
    remote_call,
)
from tether.remote.worker import DatasetPointers, Worker

__all__ = [
    "LOCAL_WORKER",
    "Client",
    "DatasetPointers",
    "LocalWorker",
    "Pointer",
    "PointerChain",
    "PointerTensor",
    "TorchHook",
    "Worker",
    "autograd",
    "chain",
    "client_of",
    "get_all",
    "install",
    "remote_call",
]
