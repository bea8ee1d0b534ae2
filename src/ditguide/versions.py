"""Installed versions of the packages a result depends on (recorded in manifests and metrics)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: Iterable[str], *, python: bool = False) -> dict[str, str | None]:
    """{name: version or None} of `names` (first "python": the interpreter's, when `python`)."""
    out: dict[str, str | None] = {"python": platform.python_version()} if python else {}
    out.update({name: package_version(name) for name in names})
    return out
