"""`sy.Module`: an nn.Module written against `torch_ref`, as in the Duet tutorials.

It builds and runs locally with plain torch. `.send(duet)` gives a remote copy (the local
model stays local): its parameters live on the owner's node, its forward runs here and each op
on them runs there, and its `.parameters()` feed `duet.torch.optim.*`. `.get(...)` asks the
owner for the trained weights — one request for all of them — and gives a new local model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from tether.remote.client import client_of
from tether.remote.hook import module_location, send_module
from tether.remote.pointer import remote_call

_SKELETON = "_tether_skeleton"


class Module(nn.Module):
    """Subclass it instead of nn.Module and build layers from `self.torch_ref`."""

    def __init__(self, torch_ref: Any = torch) -> None:
        super().__init__()
        self.torch_ref = torch_ref

    @property
    def is_local(self) -> bool:
        return module_location(self) is None

    def send(self, duet: Any) -> Module:  # type: ignore[override]
        """A copy of this model whose parameters live on `duet`'s node."""
        if not self.is_local:
            raise ValueError("this model is remote already; .get() it to have it here")
        client_of(duet)  # fail here, not halfway, when `duet` is no worker
        remote = copy.deepcopy(self)
        remote.__dict__[_SKELETON] = copy.deepcopy(self)  # what .get() fills (no submodule)
        return send_module(remote, duet)

    def get(
        self,
        request_block: bool = False,
        name: str = "",
        reason: str = "",  # type: ignore[override]
        timeout_secs: float = 30.0,
    ) -> Module | None:
        """A local model with the remote model's current weights, once the owner accepts the
        request (None when denied or timed out with `request_block=True`). This model stays
        remote and can keep training."""
        if self.is_local:
            return self
        remote = [t for _, t in self._state()]
        values = remote_call("builtins.list", [remote], {}).get(
            request_block=request_block, name=name, reason=reason, timeout_secs=timeout_secs
        )
        if values is None:
            return None
        local = copy.deepcopy(self.__dict__[_SKELETON])
        for (_, tensor), value in zip(local._state(), values, strict=True):
            tensor.data = value.detach()
        return local

    def __deepcopy__(self, memo: dict) -> Module:
        """Copies share `torch_ref` (a Python module cannot be copied, nor needs to be)."""
        memo[id(self.torch_ref)] = self.torch_ref
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def _state(self) -> list[tuple[str, Any]]:
        return [*self.named_parameters(), *self.named_buffers()]
