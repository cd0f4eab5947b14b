"""Fetch a file from a list of mirrors, check its md5, and write it atomically.

Mirrors come and go (MNIST's original host has been down for years), so each file is tried
on every mirror in turn, with retries for transient failures. The file only appears under its
final name once it is complete and verified: a crash or a bad download leaves nothing behind
that a later run could mistake for a good file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from tether.errors import DatasetError

_CHUNK = 1 << 16
_USER_AGENT = "tether-datasets"


class _CorruptDownload(Exception):
    """The bytes arrived but are not the expected file; retrying this mirror will not help."""


def download_file(
    filename: str,
    dest_dir: str | os.PathLike[str],
    mirrors: Sequence[str],
    md5: str | None,
    *,
    attempts: int = 3,
    timeout: float = 30.0,
    backoff: float = 0.25,
    hint: str = "",
) -> Path:
    """Download `<mirror>/<filename>` into `dest_dir`, trying each mirror until one succeeds.

    Each mirror gets up to `attempts` tries, waiting `backoff * 2**k` seconds between them;
    an md5 mismatch, an HTTP 4xx, a refused connection or an unknown host move on to the
    next mirror at once.
    `md5=None` skips the check. Raises DatasetError listing what every mirror said; `hint`
    is appended to that message to tell the user what else they can do.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if not mirrors:
        raise DatasetError(f"cannot download {filename}: the list of mirrors is empty")
    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{filename}"
        for attempt in range(1, attempts + 1):
            try:
                _fetch(url, target, md5, timeout)
                return target
            except _CorruptDownload as e:
                error, retry = str(e), False
            except urllib.error.HTTPError as e:
                error, retry = f"HTTP {e.code} {e.reason}", not 400 <= e.code < 500
            except (OSError, http.client.HTTPException, ValueError) as e:
                # URLError, timeouts, resets, truncated bodies, malformed URLs. A host that
                # refuses connections or does not resolve is down, not flaky: move on.
                reason = getattr(e, "reason", None) or e
                error = str(reason)
                retry = not isinstance(reason, ConnectionRefusedError | socket.gaierror)
            if not retry or attempt == attempts:
                break
            time.sleep(backoff * 2 ** (attempt - 1))
        tries = f" ({attempt} attempts)" if attempt > 1 else ""
        failures.append(f"{url}: {error}{tries}")
    tried = "\n  ".join(failures)
    raise DatasetError(
        f"could not download {filename} into {dest_dir}; every mirror failed:\n  {tried}"
        + (f"\n{hint}" if hint else "")
    )


def _fetch(url: str, target: Path, md5: str | None, timeout: float) -> None:
    """Stream `url` into a temporary file next to `target`, verify it, then rename it."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)  # a checksum, not security
        received = 0
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            length = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=length, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if length is not None and received != length:
            raise ConnectionError(f"connection closed after {received} of {length} bytes")
        got = digest.hexdigest()
        if md5 is not None and got != md5:
            raise _CorruptDownload(
                f"{target.name} is corrupted: its md5 is {got} but {md5} was expected"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
