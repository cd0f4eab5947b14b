"""tether: train and analyse PyTorch models on data you cannot see.

`import tether as sy` gives the names the PySyft tutorials use: `TorchHook`, `VirtualWorker`,
`tensor.send(worker)`, `ptr.get()`, `model.send(worker)` / `model.get()`, `sy.local_worker`,
`sy.BaseDataset`, `sy.FederatedDataset`; docs/pysyft-compatibility.md lists them all, and the
PySyft names tether does not implement (yet) raise errors that say so.
"""

import gc
from typing import Any

# Importing torch and tether makes some 10^5 objects that live as long as the process, and the
# cycle collector would walk all of them during the import and again at every full collection
# after it. So it pauses while tether imports, and then moves them to its permanent generation
# (`gc.freeze()`): a simulation's process spends a fifth less CPU up to the end of its first
# round (BENCHMARKS.md, "Simulation at scale"). Reference counting frees objects as before;
# only a reference cycle made before `import tether` is never collected.
_collecting = gc.isenabled()
gc.disable()
try:
    from tether import datasets, errors, federated, transforms
    from tether.cli.version import __version__ as __version__
    from tether.datasets import BaseDataset
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
    from tether.privacy import smpc
    from tether.privacy.smpc import AdditiveSharingTensor, FixedPrecisionTensor
    from tether.remote import (
        LOCAL_WORKER,
        Pointer,
        PointerChain,
        PointerTensor,
        TorchHook,
        Worker,
        get_all,
        install,
    )
    from tether.sandbox import PrivateGridNetwork, create_sandbox
    from tether.split import SplitNN
    from tether.transports.inprocess import VirtualWorker
    from tether.transports.websocket import WebsocketClientWorker, connect

    install()  # Tensor.send, Module.send/get, remote optimizer steps
    federated.install()  # Dataset.federate, Dataset.send
    smpc.install()  # fix_precision(), share(), float_precision()
finally:
    gc.freeze()
    if _collecting:
        gc.enable()

local_worker = LOCAL_WORKER  # PySyft's "me": the owner of every pointer

# PySyft names for features tether does not have yet (their own issues), and why.
_NOT_YET = {
    "PublicGridNetwork": (
        "is PySyft's grid of network nodes, which tether does not implement "
        "(sy.PrivateGridNetwork searches workers in this process)"
    ),
    "Plan": "(PySyft's plans) is not in tether: remote calls are pipelined instead",
    "func2plan": "(PySyft's plans) is not in tether: remote calls are pipelined instead",
}


def __getattr__(name: str) -> Any:
    why = _NOT_YET.get(name)
    if why is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    raise NotImplementedError(
        f"sy.{name} {why} (docs/pysyft-compatibility.md lists what runs today)"
    )


__all__ = [
    "AdditiveSharingTensor",
    "BaseDataset",
    "FederatedDataLoader",
    "FederatedDataset",
    "FixedPrecisionTensor",
    "Module",
    "NotAllowedError",
    "ObjectNotFoundError",
    "Optims",
    "PermissionDeniedError",
    "Pointer",
    "PointerChain",
    "PointerTensor",
    "PrivateGridNetwork",
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
    "create_sandbox",
    "datasets",
    "errors",
    "federate",
    "get_all",
    "join_duet",
    "launch_duet",
    "local_worker",
    "transforms",
]
