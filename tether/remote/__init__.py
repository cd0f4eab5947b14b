"""The scientist's side: pointers, the client that queues commands and matches replies, the
torch hook (`tensor.send`, `model.send/get`), worker handles and cross-worker autograd.

Importing this package imports `autograd`, which hooks itself into the pointer from above.
"""

from tether.remote import autograd
from tether.remote.client import Client, client_of
from tether.remote.hook import TorchHook, install
from tether.remote.pointer import Pointer, PointerTensor, get_all, remote_call
from tether.remote.worker import DatasetPointers, Worker

__all__ = [
    "Client",
    "DatasetPointers",
    "Pointer",
    "PointerTensor",
    "TorchHook",
    "Worker",
    "autograd",
    "client_of",
    "get_all",
    "install",
    "remote_call",
]
