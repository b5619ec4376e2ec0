"""The ppl_vae error family.

Every error a user can cause (bad data, an unknown estimator, a pair whose guide misses a latent
site, a corrupt checkpoint, ...) is a :class:`PplVaeError`, a :class:`ValueError`, whose message
names the problem and how to fix it. The command line turns these into one line on stderr and
exit status 2.
"""

from __future__ import annotations

import numbers
import os
import sysconfig
import traceback
from pathlib import Path


class PplVaeError(ValueError):
    """Base class of every user-facing ppl_vae error."""


class DataError(PplVaeError):
    """The data cannot be used: empty, non-numeric, non-finite, wrong width, outside support."""


class PairError(PplVaeError):
    """The model/guide pair cannot be loaded or does not fit together."""


class ScoringError(PairError):
    """ppl_vae's per-row and per-site split of a pair's log-density does not add up to the
    sum Pyro's ``Trace_ELBO`` takes of the same traces: a number would be silently wrong."""


class EstimatorError(PplVaeError):
    """Unknown estimator, or ``strict=True`` and a KL term has no closed form."""


class OutputError(PplVaeError):
    """An output location is unusable, e.g. it already holds a run."""


class NumericalError(PplVaeError):
    """Training produced a non-finite loss or gradient.

    ``history`` holds the training history up to the last good step.
    """

    def __init__(self, message: str, history=None):
        super().__init__(message)
        self.history = history


class CheckpointError(PplVaeError):
    """A parameter or checkpoint file is missing, corrupt, truncated or does not match."""


def first_line(error: BaseException) -> str:
    """An exception's first message line (its type's name when it has no message), for the
    one-line errors that wrap it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# code that is not the user's: ppl_vae itself, the standard library, installed packages
_LIBRARY = tuple(sorted({
    os.path.realpath(p) + os.sep
    for p in (Path(__file__).resolve().parents[1], *(sysconfig.get_paths()[k] for k in
              ("stdlib", "platstdlib", "purelib", "platlib")))
}))
_SHOWN_FRAMES = 3


def raised_at(error: BaseException) -> str:
    """Where ``error`` was raised, for a one-line message: the innermost frames of the user's
    own code it passed through (files outside ppl_vae, the standard library and installed
    packages, such as a pair file), at most :data:`_SHOWN_FRAMES`, innermost first, as
    ``file:line in function, called from file:line in function``; where it passed through
    none (nor did the exceptions it was raised from), the innermost frame."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(traceback.extract_tb(error.__traceback__))
        error = error.__cause__ or error.__context__
    for frames in chain:
        own = [f for f in frames if not _is_library(f.filename)]
        if own:
            return ", called from ".join(_frame(f) for f in reversed(own[-_SHOWN_FRAMES:]))
    innermost = next((frames[-1] for frames in chain if frames), None)
    return _frame(innermost) if innermost is not None else "an unknown place"


def _is_library(filename: str) -> bool:
    return filename.startswith("<") or os.path.realpath(filename).startswith(_LIBRARY)


def _frame(frame: traceback.FrameSummary) -> str:
    path = os.path.realpath(frame.filename)
    here = os.path.relpath(path)
    return f"{path if here.startswith('..') else here}:{frame.lineno} in {frame.name}"


def is_integer(value) -> bool:
    """A Python or numpy integer (not a bool, not a float that happens to be whole)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive(**values: int) -> None:
    """Refuse each ``name=value`` that is not a positive integer, naming it."""
    check_integers(1, **values)


def check_integers(least: int, **values: int) -> None:
    """Refuse each ``name=value`` that is not an integer >= ``least``, naming it: the one
    integer check of every count and seed ppl_vae takes."""
    for name, value in values.items():
        if not is_integer(value) or value < least:
            what = "a positive integer" if least == 1 else f"an integer >= {least}"
            raise PplVaeError(f"{name} must be {what}, not {value!r}")


def check_seed(seed) -> None:
    """A seed torch, numpy and Python all take: an integer in [0, 2**32)."""
    if not is_integer(seed) or not 0 <= seed < 2**32:
        raise PplVaeError(f"seed must be an integer in [0, 2**32), not {seed!r}")
