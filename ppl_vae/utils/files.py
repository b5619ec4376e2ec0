"""Atomic file writes: a reader sees the old complete file or the new one, never half.

Write to a temporary file in the same directory, fsync it, ``os.replace`` it over the target,
then fsync the directory so the rename itself survives a crash. Files get the mode ``open``
would give them (0666 less the umask).

A write that fails leaves no temporary file and raises what it hit: torch's zip writer turns
an exception raised by the file's ``write`` (a full disk, a Ctrl-C) into a ``RuntimeError``
("unexpected pos"), raised while handling it; :func:`atomic_write` raises the original
instead, a full disk as an ``OSError`` naming the file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary binary file and atomically move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        hit = _hit(e)
        if isinstance(hit, OSError):
            raise OSError(hit.errno, os.strerror(hit.errno), str(path)) from e
        if hit is not None and hit is not e:
            raise hit from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException) -> OSError | None:
    """The out-of-space ``OSError`` (no space left, or the quota exceeded) that ``error`` is,
    or that it was raised from or while handling; None if there is none."""
    hit = _hit(error)
    return hit if isinstance(hit, OSError) else None


def _hit(error: BaseException) -> BaseException | None:
    """The first of ``error`` and the exceptions it was raised from or while handling that is
    a stop (``KeyboardInterrupt``, a signal's) or an out-of-space ``OSError``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt) or (
            isinstance(error, OSError) and error.errno in DISK_FULL
        ):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
