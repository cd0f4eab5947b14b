"""MNIST loading, its errors, the downloader against a local HTTP server, and materialize."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from tether.datasets import MNIST, BaseDataset, materialize
from tether.datasets.download import download_file
from tether.datasets.mnist import MD5S, SAMPLE_DIR
from tether.errors import DatasetError
from tether.transforms import Compose, Normalize, ToTensor

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
ALL_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
# From mnist_sample/README.md: the sample's train files differ from the full MNIST ones.
SAMPLE_MD5S = {
    f"{TRAIN_IMAGES}.gz": "86cdf6704dadc654e231abcefb0fb4cf",
    f"{TRAIN_LABELS}.gz": "375e5ffeab42a5d13d81367316fe221c",
    f"{TEST_IMAGES}.gz": "9fb629c4189551a2d022fa330f9573f3",
    f"{TEST_LABELS}.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_NORM = Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def parse_directly(name: str) -> np.ndarray:
    """An independent reader: fixed IDX header sizes, no validation."""
    raw = gzip.decompress((SAMPLE_DIR / f"{name}.gz").read_bytes())
    if "labels" in name:
        return np.frombuffer(raw, np.uint8, offset=8)
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


@pytest.fixture(scope="module")
def train() -> MNIST:
    return MNIST()


def copy_sample(dest: Path, gz: bool = True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ALL_FILES:
        src = SAMPLE_DIR / f"{name}.gz"
        if gz:
            shutil.copy(src, dest / src.name)
        else:
            (dest / name).write_bytes(gzip.decompress(src.read_bytes()))
    return dest


# --- the embedded sample -------------------------------------------------------------------


def test_shipped_files_are_the_documented_sample():
    for name, digest in SAMPLE_MD5S.items():
        assert md5(SAMPLE_DIR / name) == digest
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "Yann LeCun" in readme and "Creative Commons" in readme


def test_embedded_sample_loads(train):
    assert len(train) == 5000
    assert train.data.shape == (5000, 28, 28) and train.data.dtype == torch.uint8
    assert train.targets.dtype == torch.int64
    assert torch.bincount(train.targets).tolist() == [500] * 10
    assert np.array_equal(train.data.numpy(), parse_directly(TRAIN_IMAGES))
    assert np.array_equal(train.targets.numpy(), parse_directly(TRAIN_LABELS))

    test = MNIST(train=False)
    assert len(test) == 10000 and test.data.shape == (10000, 28, 28)
    assert np.array_equal(test.data.numpy(), parse_directly(TEST_IMAGES))
    assert np.array_equal(test.targets.numpy(), parse_directly(TEST_LABELS))


def test_embedded_sample_loads_fast():
    start = time.perf_counter()
    MNIST()
    MNIST(train=False)
    assert time.perf_counter() - start < 1.0


def test_samples_look_like_torchvision(train):
    img, label = train[3]
    assert isinstance(label, int) and label == int(train.targets[3])
    assert img.dtype == torch.uint8 and img.shape == (28, 28)
    assert torch.equal(img, train.data[3])
    assert len(train.classes) == 10 and train.classes[7] == "7 - seven"
    assert train.class_to_idx["7 - seven"] == 7

    tf = MNIST(transform=MNIST_NORM, target_transform=lambda y: y + 100)
    img, label = tf[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32
    assert torch.equal(img, MNIST_NORM(train.data[3]))
    assert label == int(train.targets[3]) + 100
    assert "Split: Train" in repr(tf) and "Normalize" in repr(tf)


# --- layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_torchvision_layout(tmp_path, train, gz):
    copy_sample(tmp_path / "MNIST" / "raw", gz=gz)
    ds = MNIST(root=tmp_path)
    assert torch.equal(ds.data, train.data) and torch.equal(ds.targets, train.targets)


@pytest.mark.parametrize("gz", [True, False])
def test_plain_folder(tmp_path, gz):
    copy_sample(tmp_path, gz=gz)
    ds = MNIST(root=str(tmp_path), train=False)
    assert np.array_equal(ds.data.numpy(), parse_directly(TEST_IMAGES))


def test_root_expands_user(tmp_path, monkeypatch, train):
    monkeypatch.setenv("HOME", str(tmp_path))
    copy_sample(tmp_path / "data")
    assert torch.equal(MNIST(root="~/data").targets, train.targets)


# --- bad inputs ----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    copy_sample(tmp_path)
    (tmp_path / f"{TRAIN_LABELS}.gz").unlink()
    with pytest.raises(DatasetError) as err:
        MNIST(root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / f"{TRAIN_LABELS}.gz") in message
    assert "download=True" in message and "root=None" in message


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path, gz):
    copy_sample(tmp_path, gz=gz)
    path = tmp_path / (f"{TRAIN_IMAGES}.gz" if gz else TRAIN_IMAGES)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DatasetError, match="download") as err:
        MNIST(root=tmp_path)
    assert str(path) in str(err.value)


def test_truncated_header(tmp_path):
    copy_sample(tmp_path, gz=False)
    path = tmp_path / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DatasetError, match="truncated") as err:
        MNIST(root=tmp_path)
    assert str(path) in str(err.value)


def test_wrong_magic(tmp_path):
    copy_sample(tmp_path, gz=False)
    # A label file where the image file should be.
    shutil.copy(tmp_path / TRAIN_LABELS, tmp_path / TRAIN_IMAGES)
    with pytest.raises(DatasetError, match="magic number 0x00000801") as err:
        MNIST(root=tmp_path)
    assert str(tmp_path / TRAIN_IMAGES) in str(err.value)


def test_count_mismatch(tmp_path):
    copy_sample(tmp_path, gz=False)
    labels = parse_directly(TRAIN_LABELS)[:4999]
    header = (0x801).to_bytes(4, "big") + (4999).to_bytes(4, "big")
    (tmp_path / TRAIN_LABELS).write_bytes(header + labels.tobytes())
    with pytest.raises(DatasetError, match="5000 images") as err:
        MNIST(root=tmp_path)
    assert str(tmp_path / TRAIN_IMAGES) in str(err.value)
    assert str(tmp_path / TRAIN_LABELS) in str(err.value)


def test_labels_out_of_range(tmp_path):
    copy_sample(tmp_path, gz=False)
    path = tmp_path / TRAIN_LABELS
    raw = bytearray(path.read_bytes())
    raw[8] = 12
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="0-9") as err:
        MNIST(root=tmp_path)
    assert str(path) in str(err.value)


# --- downloading from a local HTTP server --------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve(directory: Path, handler: type = QuietHandler) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 and yield its base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dead_mirror() -> str:
    """A URL on a port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Requests to the local server must not go through a proxy from the environment."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_download(tmp_path, train):
    served = copy_sample(tmp_path / "served")
    with serve(served) as url:
        ds = MNIST(root=tmp_path / "data", download=True, mirrors=[url], md5s=SAMPLE_MD5S)
    assert torch.equal(ds.data, train.data) and torch.equal(ds.targets, train.targets)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in ALL_FILES)
    # Present files are not fetched again: a dead mirror does not matter now.
    again = MNIST(root=tmp_path / "data", train=False, download=True, mirrors=[dead_mirror()])
    assert len(again) == 10000


def test_download_checks_official_md5_by_default(tmp_path):
    served = copy_sample(tmp_path / "served")
    with serve(served) as url, pytest.raises(DatasetError) as err:
        MNIST(root=tmp_path / "data", download=True, mirrors=[url])
    message = str(err.value)
    assert f"{TRAIN_IMAGES}.gz" in message
    assert MD5S[f"{TRAIN_IMAGES}.gz"] in message and SAMPLE_MD5S[f"{TRAIN_IMAGES}.gz"] in message


def test_corrupted_download_leaves_nothing_behind(tmp_path):
    served = copy_sample(tmp_path / "served")
    path = served / f"{TRAIN_IMAGES}.gz"
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF
    path.write_bytes(bytes(raw))
    with serve(served) as url, pytest.raises(DatasetError) as err:
        MNIST(root=tmp_path / "data", download=True, mirrors=[url], md5s=SAMPLE_MD5S)
    message = str(err.value)
    assert f"{TRAIN_IMAGES}.gz is corrupted" in message
    assert md5(path) in message and SAMPLE_MD5S[f"{TRAIN_IMAGES}.gz"] in message
    assert "root=None" in message
    assert list((tmp_path / "data" / "MNIST" / "raw").iterdir()) == []


def test_dead_mirror_falls_through(tmp_path, train):
    served = copy_sample(tmp_path / "served")
    with serve(served) as url:
        ds = MNIST(
            root=tmp_path / "data", download=True, mirrors=[dead_mirror(), url], md5s=SAMPLE_MD5S
        )
    assert torch.equal(ds.data, train.data)


def test_all_mirrors_failing_lists_each(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    dead = dead_mirror()
    with serve(empty) as url, pytest.raises(DatasetError) as err:
        MNIST(root=tmp_path / "data", download=True, mirrors=[dead, url])
    message = str(err.value)
    assert f"{dead}{TRAIN_IMAGES}.gz: " in message and "refused" in message.lower()
    assert f"{url}{TRAIN_IMAGES}.gz: HTTP 404" in message
    assert list((tmp_path / "data" / "MNIST" / "raw").iterdir()) == []


class FlakyHandler(QuietHandler):
    """Answers 503 to the first two requests, then serves files."""

    failures_left = 2

    def do_GET(self):
        if FlakyHandler.failures_left:
            FlakyHandler.failures_left -= 1
            self.send_error(503, "try later")
        else:
            super().do_GET()


def test_download_retries_transient_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(FlakyHandler, "failures_left", 2)
    served = copy_sample(tmp_path / "served")
    name = f"{TRAIN_LABELS}.gz"
    with serve(served, FlakyHandler) as url:
        path = download_file(name, tmp_path / "out", [url], SAMPLE_MD5S[name], backoff=0)
    assert md5(path) == SAMPLE_MD5S[name] and FlakyHandler.failures_left == 0


class TruncatingHandler(QuietHandler):
    """Promises the whole file, sends half of it, and hangs up."""

    def do_GET(self):
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True


def test_truncated_transfer_leaves_nothing_behind(tmp_path):
    served = copy_sample(tmp_path / "served")
    out = tmp_path / "out"
    with serve(served, TruncatingHandler) as url, pytest.raises(DatasetError) as err:
        download_file(f"{TEST_LABELS}.gz", out, [url], md5=None, attempts=2, backoff=0)
    assert "2 attempts" in str(err.value) and "bytes" in str(err.value)
    assert list(out.iterdir()) == []


# --- materialize ---------------------------------------------------------------------------


def test_materialize_fast_path_equals_per_sample(monkeypatch):
    ds = MNIST(transform=MNIST_NORM)
    slow_data, slow_targets = materialize(Subset(ds, range(len(ds))))
    # The fast path must not touch samples one by one.
    monkeypatch.setattr(BaseDataset, "__getitem__", lambda self, i: pytest.fail("per-sample"))
    data, targets = materialize(ds)
    assert data.shape == (5000, 1, 28, 28) and data.dtype == torch.float32
    assert torch.equal(data, slow_data)
    assert torch.equal(targets, slow_targets) and targets.dtype == torch.int64


def test_materialize_without_transform_copies(train):
    data, targets = materialize(train)
    assert torch.equal(data, train.data) and torch.equal(targets, train.targets)
    data[0] += 1
    assert not torch.equal(data[0], train.data[0])


def test_materialize_color_images_fast_equals_slow():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (20, 8, 8, 3), dtype=torch.uint8, generator=gen)
    ds = BaseDataset(imgs, torch.arange(20) % 3, Normalize((0.0,), (1.0,)))
    with pytest.raises(TypeError):  # uint8 cannot be normalized: same error both ways
        materialize(ds)
    ds.transform = Compose([ToTensor(), Normalize((0.4, 0.5, 0.6), (0.2, 0.3, 0.4))])
    data, targets = materialize(ds)
    slow, _ = materialize(Subset(ds, range(20)))
    assert data.shape == (20, 3, 8, 8) and torch.equal(data, slow)
    assert targets.tolist() == [i % 3 for i in range(20)]


class ArrayDataset(Dataset):
    """A foreign dataset returning numpy images and numpy integer labels."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.full((2, 2), i, dtype=np.uint8), np.int32(i % 2)


def test_materialize_any_dataset():
    data, targets = materialize(ArrayDataset())
    assert data.shape == (4, 2, 2) and data.dtype == torch.uint8
    assert targets.dtype == torch.int64 and targets.tolist() == [0, 1, 0, 1]

    lambda_ds = BaseDataset(torch.arange(6.0).view(3, 2), [5, 6, 7], transform=lambda x: x * 2)
    data, targets = materialize(lambda_ds)
    assert torch.equal(data, torch.arange(6.0).view(3, 2) * 2)
    assert targets.dtype == torch.int64 and targets.tolist() == [5, 6, 7]

    float_targets = BaseDataset(torch.zeros(2, 1), torch.tensor([0.5, 1.5]))
    assert materialize(float_targets)[1].dtype == torch.float32


def test_materialize_shows_progress_on_large_datasets(capsys):
    ds = Subset(BaseDataset(torch.zeros(10_001, 1), torch.zeros(10_001, dtype=torch.int64)),
                range(10_001))  # fmt: skip
    materialize(ds)
    assert "materialize" in capsys.readouterr().err


def test_materialize_rejects_empty():
    with pytest.raises(DatasetError, match="empty"):
        materialize(Subset(MNIST(), []))
    with pytest.raises(DatasetError, match="empty"):
        materialize(BaseDataset(torch.zeros(0, 2, 2), torch.zeros(0), ToTensor()))


def test_base_dataset_length_mismatch():
    with pytest.raises(ValueError, match="3 samples"):
        BaseDataset(torch.zeros(3, 2), torch.zeros(2))


@pytest.mark.parametrize(
    "transform",
    [None, ToTensor(), Compose([ToTensor(), Normalize(0.1307, 0.3081)]), Compose([lambda x: x])],
    ids=["none", "to-tensor", "mnist", "other"],
)
def test_a_loader_batch_is_the_samples_it_would_fetch_one_by_one(transform) -> None:
    """`BaseDataset.__getitems__` (what DataLoader asks for) transforms a batch at once where
    that is exact: the batches equal those of the same loader fetching sample by sample."""
    mnist = MNIST(SAMPLE_DIR, train=True, transform=transform)
    subset = Subset(mnist, range(300))

    class OneByOne(Dataset):
        def __len__(self) -> int:
            return len(subset)

        def __getitem__(self, i: int):
            return subset[i]

    batches = []
    for dataset in (subset, OneByOne()):
        torch.manual_seed(0)
        batches.append(list(torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)))
    for (x, y), (x1, y1) in zip(*batches, strict=True):
        assert torch.equal(x, x1) and torch.equal(y, y1) and x.dtype == x1.dtype
    assert mnist.__getitems__([3, 1])[1][1] == mnist[1][1] and type(mnist[1][1]) is int
