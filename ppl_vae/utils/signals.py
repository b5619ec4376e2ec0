"""Stop signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP end a command as one exception, once.

The first stop signal raises :class:`Stopped` (a ``KeyboardInterrupt``) where the program is,
so that it unwinds as Ctrl-C does: ``finally`` blocks and ``except BaseException`` handlers
remove what was half written and release the locks. The signals after it are ignored, so that
a Ctrl-C pressed again and again cannot interrupt that clean-up, the one-line report, or the
interpreter's exit with a second exception (and its traceback).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_stopping = False  # a stop signal has been raised, or the command is ending: ignore the rest


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where the program is so that it unwinds like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block the first stop signal raises :class:`Stopped` and the later ones are
    ignored; the handlers from before the block come back after it. Nested in another such
    block (the process's, :func:`install`), it shares that block's state."""
    global _stopping
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    if all(handler is not _stop for handler in previous.values()):
        _stopping = False
    for s in STOP_SIGNALS:
        signal.signal(s, _stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def install() -> None:
    """Handle the stop signals as :func:`stop_signals` does, for the rest of the process."""
    global _stopping
    _stopping = False
    for s in STOP_SIGNALS:
        signal.signal(s, _stop)


def finish() -> None:
    """Ignore every stop signal from now on: the process is ending."""
    global _stopping
    _stopping = True
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def report(stop: KeyboardInterrupt) -> tuple[str, int]:
    """The one line and the exit status that end a command stopped by ``stop``: Ctrl-C (or a
    ``KeyboardInterrupt`` of another origin) ``interrupted``, 130; another signal ``stopped by
    SIGTERM``, 128 + its number."""
    signum = getattr(stop, "signum", signal.SIGINT)
    if signum == signal.SIGINT:
        return "interrupted", 128 + signal.SIGINT
    return f"stopped by {signal.Signals(signum).name}", 128 + signum
