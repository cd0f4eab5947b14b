"""Gradients that cross workers.

`ptr.move(worker, requires_grad=True)` moves an activation and records the edge it crossed.
When `backward()` runs on a worker, the gradients of the activations that arrived there are
sent back along their edges and backward continues where each came from — so a split network
trains all of its segments from one `loss.backward()`.

This module hooks itself into `tether.remote.pointer` from above (`set_mover`, `on_backward`):
the pointer never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.remote.client import Client, client_of
from tether.remote.hook import send_tensor
from tether.remote.pointer import Pointer, get_all, on_backward, remote_call, set_mover

# Edges whose backward never came (an evaluation pass, say) are dropped past this many.
_MAX_EDGES = 4096


@dataclass
class _Edge:
    """An activation moved with requires_grad=True: its gradient at `dst` flows back to `src`."""

    src: Pointer
    dst: Pointer


_EDGES: list[_Edge] = []


def move(pointer: Pointer, worker: Any, requires_grad: bool = False) -> Pointer:
    """Move a remote tensor to another worker (through here); `pointer` is spent unless
    requires_grad, where it is kept as the end of the edge that gradients flow back to."""
    target = client_of(worker)
    if target is pointer.client:
        return pointer
    if not requires_grad:
        return send_tensor(pointer.get(), worker, requires_grad=False)
    moved = send_tensor(pointer.get(delete=False), worker, requires_grad=True)
    _EDGES.append(_Edge(pointer, moved))
    del _EDGES[:-_MAX_EDGES]
    return moved


def after_backward(client: Client) -> None:
    """backward() ran on `client`'s worker: send the gradients of the activations that were
    moved there back to where they came from, and continue backward there (recursively)."""
    arrived = [e for e in _EDGES if e.dst.client is client]
    if not arrived:
        return
    _EDGES[:] = [e for e in _EDGES if e.dst.client is not client]
    grads = get_all([remote_call("torch.Tensor.grad", [e.dst], {}) for e in arrived])
    for edge, grad in zip(reversed(arrived), reversed(grads), strict=True):
        if grad is not None:
            remote_call("torch.Tensor.backward", [edge.src, grad], {})


set_mover(move)
on_backward(after_backward)
