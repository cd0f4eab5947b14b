"""Split neural networks: a model cut into segments that live on different workers.

Each worker holds only its segment and the activations at its boundaries; activations move
forward between workers and their gradients flow back (see tether.remote.autograd), so one
`loss.backward()` trains every segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tether import errors
from tether.remote.hook import get_module, send_module
from tether.remote.pointer import Pointer


class SplitNN:
    """`SplitNN(segments, locations, optimizers)`: segment i runs on locations[i] and is
    stepped by optimizers[i]. The first segment's input and the labels may be on any
    workers; a U-shape (first and last segment with the data owner) works the same way."""

    def __init__(
        self,
        segments: Sequence[nn.Module],
        locations: Sequence[Any],
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> None:
        if not segments:
            raise ValueError("a SplitNN needs at least one segment")
        if not len(segments) == len(locations) == len(optimizers):
            raise ValueError(
                f"got {len(segments)} segments, {len(locations)} locations and "
                f"{len(optimizers)} optimizers: give one of each per segment"
            )
        self.segments = list(segments)
        self.locations = list(locations)
        self.optimizers = list(optimizers)
        for segment, location in zip(self.segments, self.locations, strict=True):
            send_module(segment, location)
        self._checked = False

    def forward(self, x: Pointer) -> Pointer:
        """Run the segments in turn, moving each activation to the next segment's worker."""
        activation = x
        for i, (segment, location) in enumerate(zip(self.segments, self.locations, strict=True)):
            try:
                if i > 0:
                    activation = activation.move(location, requires_grad=True)
                activation = segment(activation)
                if not self._checked:  # the first pass checks that the segments chain
                    activation.shape  # noqa: B018 (waits for the worker's answer)
            except errors.TetherError as exc:
                raise type(exc)(
                    f"segment {i} ({type(segment).__name__} on "
                    f"{getattr(location, 'id', location)!r}): {exc}"
                ) from exc
        self._checked = True
        return activation

    __call__ = forward

    def backward(self, loss: Pointer) -> None:
        """Backpropagate from the loss through every segment, across workers."""
        loss.backward()

    def zero_grads(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def get(self) -> list[nn.Module]:
        """Bring every segment's trained weights back here."""
        return [get_module(segment) for segment in self.segments]
