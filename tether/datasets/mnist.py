"""MNIST without torchvision, with a real sample shipped inside the package.

`MNIST(root=None)` works offline: it loads the embedded sample (5,000 training images, the
official 10,000 test images). Given a `root` it reads the standard IDX files, gzipped or not,
from torchvision's layout (`root/MNIST/raw/`) or from a plain folder, so a dataset that
torchvision already downloaded is reused as is.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tether.datasets.base import BaseDataset
from tether.datasets.download import download_file
from tether.errors import DatasetError

# The mean and standard deviation of MNIST's training pixels (in [0, 1]): the tutorials'
# Normalize((0.1307,), (0.3081,)).
MEAN, STD = 0.1307, 0.3081
SAMPLE_DIR = Path(__file__).resolve().parent / "mnist_sample"

# Base URLs tried in order by `download=True`; each serves the four `.gz` files.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# md5 of the official full MNIST files, checked after every download.
MD5S = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_SPLITS = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


class MNIST(BaseDataset):
    """The MNIST digits, API-compatible with `torchvision.datasets.MNIST`.

    `root=None` loads the sample embedded in tether. `download=True` fetches missing files
    into `root/MNIST/raw` from `mirrors` (default: the module's `MIRRORS`), checking them
    against `md5s` (merged over the module's `MD5S`, keyed by `.gz` file name).
    Samples are `(image, label)`: the image is the uint8 28x28 tensor passed through
    `transform`, the label an int.
    """

    classes = [
        "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
        "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
    ]  # fmt: skip

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        download: bool = False,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        *,
        mirrors: Sequence[str] | None = None,
        md5s: Mapping[str, str] | None = None,
    ) -> None:
        self.root = SAMPLE_DIR if root is None else Path(root).expanduser()
        self.train = train
        if download and root is not None:
            self.download(mirrors=mirrors, md5s=md5s)
        images_name, labels_name = _SPLITS[train]
        images_path = self._find(images_name)
        labels_path = self._find(labels_name)
        images = read_idx(images_path, _IMAGES_MAGIC)
        labels = read_idx(labels_path, _LABELS_MAGIC)
        if len(images) != len(labels):
            raise DatasetError(
                f"{images_path} holds {len(images)} images but {labels_path} holds "
                f"{len(labels)} labels; the two files come from different sets, "
                "replace them with a matching pair"
            )
        if len(labels) and labels.max() > 9:
            raise DatasetError(
                f"{labels_path} contains the label {labels.max()}, but MNIST labels are 0-9; "
                "it is not an MNIST label file"
            )
        super().__init__(
            torch.from_numpy(images),
            torch.from_numpy(labels.astype(np.int64)),
            transform,
            target_transform,
        )

    @property
    def raw_folder(self) -> Path:
        """Where torchvision keeps the files, and where `download=True` puts them."""
        return self.root / "MNIST" / "raw"

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def download(
        self, mirrors: Sequence[str] | None = None, md5s: Mapping[str, str] | None = None
    ) -> None:
        """Fetch whichever of the four MNIST files cannot be found under `root`."""
        checksums = {**MD5S, **(md5s or {})}
        for name in (*_SPLITS[True], *_SPLITS[False]):
            if self._candidates(name, existing=True):
                continue
            download_file(
                f"{name}.gz",
                self.raw_folder,
                MIRRORS if mirrors is None else mirrors,
                checksums[f"{name}.gz"],
                hint="Check your connection, put the files there yourself, "
                "or use MNIST(root=None) for the sample embedded in tether.",
            )

    def _candidates(self, name: str, existing: bool = False) -> list[Path]:
        """Where a file may be: torchvision's layout first, then the plain folder."""
        paths = [
            folder / f"{name}{ext}"
            for folder in (self.raw_folder, self.root)
            for ext in ("", ".gz")
        ]
        return [p for p in paths if p.is_file()] if existing else paths

    def _find(self, name: str) -> Path:
        found = self._candidates(name, existing=True)
        if found:
            return found[0]
        tried = "\n  ".join(str(p) for p in self._candidates(name))
        raise DatasetError(
            f"MNIST file {name} not found; looked for:\n  {tried}\n"
            "Pass download=True to fetch it, or root=None to use the sample embedded in tether."
        )

    def __repr__(self) -> str:
        lines = [
            f"Dataset {self.__class__.__name__}",
            f"    Number of datapoints: {len(self)}",
            f"    Root location: {self.root}",
            f"    Split: {'Train' if self.train else 'Test'}",
        ]
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}".replace("\n", "\n    "))
        if self.target_transform is not None:
            lines.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(lines)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (gzipped if its name ends in .gz) of unsigned bytes into an array.

    Raises DatasetError naming the file when it is unreadable, of another kind (`magic`
    differs), truncated, or longer than its header says.
    """
    redownload = "delete it and download it again (download=True)"
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read {path}: {e}; {redownload}") from e
    if len(raw) < 4:
        raise DatasetError(f"{path} is truncated ({len(raw)} bytes); {redownload}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{path} has magic number {found:#010x}, expected {magic:#010x}: it is not an "
            f"MNIST {'image' if magic == _IMAGES_MAGIC else 'label'} file; replace it"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its header; {redownload}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {problem}: {len(raw)} bytes for shape {shape}, expected {expected}; "
            f"{redownload}"
        )
    # Copy out of the immutable bytes so the tensor built on it is writable.
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()
