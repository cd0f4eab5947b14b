"""The three image transforms the tutorials use, with torchvision's names and semantics.

tether does not depend on torchvision, so `Compose`, `ToTensor` and `Normalize` live here.
They behave like torchvision's on single images (PIL images, numpy arrays) and also accept
tensors, a single image or a whole batch. `tether.datasets.materialize` transforms a dataset
in one vectorized step by mapping them over its images with `torch.vmap`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

# A 3-D tensor whose last dimension is at most this is read as one HxWxC image;
# otherwise as a batch NxHxW of grayscale images (no real image is 4 pixels wide).
_MAX_CHANNELS = 4


class Compose:
    """Chain transforms: `Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])`."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        lines = "".join(f"\n    {t}" for t in self.transforms)
        return f"{self.__class__.__name__}({lines}\n)"


class ToTensor:
    """Turn an image (or a batch) into a float tensor, channels first, scaled to [0, 1].

    Inputs are channels-last, as images are stored: a numpy array or PIL image HxW or HxWxC
    gives CxHxW (exactly torchvision's rule). Tensors are accepted too: HxW gives 1xHxW,
    HxWxC (C <= 4) gives CxHxW, a batch NxHxW gives Nx1xHxW and NxHxWxC gives NxCxHxW.
    uint8 (and bool) input is scaled by 1/255; other dtypes keep their values, as in torchvision.
    """

    def __call__(self, pic: Any) -> torch.Tensor:
        if isinstance(pic, torch.Tensor):
            img = _channels_first(pic)
        else:
            # numpy arrays, and PIL images through their array interface.
            arr = np.asarray(pic)
            if arr.dtype == np.bool_:  # PIL mode "1": torchvision maps True to 255
                arr = arr.astype(np.uint8) * 255
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if arr.ndim != 3:
                raise ValueError(f"ToTensor expects an HxW or HxWxC array, got shape {arr.shape}")
            img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        img = img.contiguous()
        if img.dtype == torch.uint8:
            return img.to(torch.get_default_dtype()).div(255)
        return img

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


def _channels_first(img: torch.Tensor) -> torch.Tensor:
    """Reorder a channels-last tensor image or batch to channels-first (see `ToTensor`)."""
    if img.ndim == 2:
        return img.unsqueeze(0)
    if img.ndim == 3 and img.shape[-1] <= _MAX_CHANNELS:
        return img.permute(2, 0, 1)
    if img.ndim == 3:
        return img.unsqueeze(1)
    if img.ndim == 4:
        return img.permute(0, 3, 1, 2)
    raise ValueError(f"ToTensor expects HxW, HxWxC, NxHxW or NxHxWxC, got shape {tuple(img.shape)}")


class Normalize:
    """Standardize each channel: `(x - mean[c]) / std[c]`, over CxHxW or a batch NxCxHxW.

    One value of mean/std applies to every channel. Like torchvision, the input must be a
    float tensor and is left untouched unless `inplace=True`.
    """

    def __init__(
        self, mean: Sequence[float] | float, std: Sequence[float] | float, inplace: bool = False
    ) -> None:
        if any(s == 0 for s in np.atleast_1d(np.asarray(std, dtype=float))):
            raise ValueError(f"std evaluated to zero, leading to division by zero: std={std}")
        self.mean = mean
        self.std = std
        self.inplace = inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(f"Normalize expects a float tensor (apply ToTensor first), got {got}")
        if tensor.ndim < 3:
            raise ValueError(
                f"Normalize expects a CxHxW or NxCxHxW tensor, got shape {tuple(tensor.shape)}"
            )
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)
        if mean.ndim == 1:
            mean = mean.view(-1, 1, 1)
        if std.ndim == 1:
            std = std.view(-1, 1, 1)
        if not self.inplace:
            tensor = tensor.clone()
        return tensor.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.mean}, std={self.std})"
