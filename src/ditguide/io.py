"""Atomic writes: a reader, a failed stage or a killed run never sees a half-written output.

Every writer in the package goes through these (DVC stages rely on it: their outputs are `persist`,
so a stage that fails must leave the committed files as they were).

    write_text_atomic(path, text)          # JSON, tables
    with atomic_path(path) as tmp:         # any writer that takes a path: savefig, np.savez, save_file
        fig.savefig(tmp, format="pdf")
    with atomic_dir(out_dir) as tmp:       # a folder (a saved pipeline): old one replaced only at the end
        pipe.save_pretrained(tmp)

A temporary sits beside its target (same filesystem, so `os.replace` is atomic), hidden, with a
unique name; on an error it is deleted and the target is untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What a failed download raises (callers add what to download and where).
DOWNLOAD_ERRORS = (urllib.error.URLError, OSError, TimeoutError)


def temporary_name(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A hidden, unique sibling of `path`: `.{name}.{pid}.{random}{suffix}`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(
    path: str | os.PathLike, *, tmp: str | os.PathLike | None = None, suffix: str = ".tmp", fsync: bool = False
) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on an error it is deleted.

    tmp: the temporary's path (default `temporary_name(path, suffix)`; give one on the same filesystem,
    e.g. a short name in a staging folder when `path`'s name is near the 255-byte limit). suffix: for
    writers that pick the format from it (np.savez adds ".npz" to any other name). fsync: flush the
    file to disk before the rename (generation outputs, which a crash must not leave empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix) if tmp is None else Path(tmp)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """UTF-8 text (JSON, LaTeX tables, reports), written atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def replace_dir(new_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Move the finished folder `new_dir` to `out_dir`, replacing a folder there.

    A folder cannot be replaced in one rename, so: the old folder is renamed aside, the new one renamed
    in, and only then is the old one deleted. `out_dir` is never missing the old contents while the new
    are incomplete; if the second rename fails, the old folder is put back. (A crash between the two
    renames leaves the old folder beside it as `.{name}.*.old`.)"""
    new_dir, out_dir = Path(new_dir), Path(out_dir)
    old = None
    if out_dir.exists():
        old = temporary_name(out_dir, ".old")
        os.replace(out_dir, old)
    try:
        os.replace(new_dir, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir` to fill; on success it replaces `out_dir` (`replace_dir`),
    on an error it is deleted and `out_dir` is untouched."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_atomic(url: str, dest: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` via a temporary file; a failed or killed download leaves nothing at `dest`.

    Raises one of DOWNLOAD_ERRORS on failure; callers add what to download and where."""
    dest = Path(dest)
    with atomic_path(dest, suffix=".part") as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    return dest
