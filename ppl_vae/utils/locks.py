"""Exclusive OS locks on output locations, and swapping a finished run into place atomically.

Two runs writing one ``--out`` (or one ``--checkpoint-dir``) at once would silently replace each
other's results; :func:`exclusive` (a lock file beside a run directory) and
:func:`exclusive_directory` (the checkpoint directory itself) let one of them hold the location
and refuse the other. The lock is ``flock(2)``: the OS drops it when its process dies, so a
killed run never leaves a lock that blocks the next one (a lock file it leaves is reused and
removed by the next run). On systems without ``fcntl`` there is no locking.

:func:`exchange` swaps two directories with ``renameat2(RENAME_EXCHANGE)`` where Linux has it,
so that a kill at any moment leaves either the old run or the new one in place, never neither.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextlib.contextmanager
def exclusive(path: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block; raise ``busy()`` at once if
    another process holds it. The lock file is removed when the block ends."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy() from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # locked a file its holder had just removed: lock the one in its place
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it, so no one locks the removed file
        os.close(fd)


@contextlib.contextmanager
def exclusive_directory(directory: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` itself (made if missing) for the block; raise
    ``busy()`` at once if another process holds it. Nothing is written into the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        yield
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Swap directories ``a`` and ``b`` in one atomic step; False where the OS cannot."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0
