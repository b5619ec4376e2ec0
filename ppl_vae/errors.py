"""The ppl_vae error family.

Every error a user can cause (bad data, an unknown estimator, a pair whose guide misses a latent
site, a corrupt checkpoint, ...) is a :class:`PplVaeError`, a :class:`ValueError`, whose message
names the problem and how to fix it. The command line turns these into one line on stderr and
exit status 2.
"""

from __future__ import annotations


class PplVaeError(ValueError):
    """Base class of every user-facing ppl_vae error."""


class DataError(PplVaeError):
    """The data cannot be used: empty, non-numeric, non-finite, wrong width, outside support."""


class PairError(PplVaeError):
    """The model/guide pair cannot be loaded or does not fit together."""


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


def check_positive(**values: int) -> None:
    """Refuse each ``name=value`` that is not a positive integer, naming it."""
    for name, value in values.items():
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise PplVaeError(f"{name} must be a positive integer, not {value!r}")
