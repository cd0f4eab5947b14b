"""The installed tether's version (`tether --version`, `tether.__version__`), read from the
package metadata, so that pyproject.toml is the one place it is written."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tether")
except PackageNotFoundError:  # a source tree on the path that was never installed
    __version__ = "0+unknown"
