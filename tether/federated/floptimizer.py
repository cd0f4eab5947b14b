"""The seed tutorials' import path: `from tether.federated.floptimizer import Optims` (PySyft's
`syft.federated.floptimizer`). The class lives in `tether.federated.data.optims`."""

from tether.federated.data.optims import Optims

__all__ = ["Optims"]
