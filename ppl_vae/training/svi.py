"""One SVI step over an explicit training state, and the diagnosis of a step that fails.

The state of a run (:class:`TrainingState`) is everything the next step depends on besides
Pyro's param store, the optimizer and the RNGs: the steps done, the history rows, the elapsed
training time and the minibatch order. :meth:`Trainer.update` takes one step on it, as
NumPyro's ``SVI.update`` does on an ``SVIState``; the checkpointer saves and restores it whole.

A step is Pyro's ``SVI.step`` (Hoffman et al. 2013; Kingma & Welling 2014) written out so that
a non-finite loss or gradient is caught *before* the optimizer applies it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import pyro
import torch

from ..pair.data import first_overflowing
from ..pair.dataset import Batch, Dataset
from ..pair.traces import (
    is_invalid_parameter,
    is_latent,
    is_likelihood,
    pair_exception,
    run_pair,
)
from ..utils.errors import (
    DataError,
    NumericalError,
    PairError,
    PplVaeError,
    first_line,
    raised_at,
)
from ..utils.rng import forked
from . import distributed
from .checkpoint import Checkpointer
from .state import TrainingState
from .step_params import StepParams
from .warmup import LatentScale, kl_weight

HISTORY_COLUMNS = ["step", "epoch", "elbo", "beta", "time_s"]
# the fix of a numerical fault at a run's first step, before the optimizer has changed anything
FIRST_STEP_FIX = (
    "no update had been applied, so neither lr nor clip_norm is the cause: the pair gives it "
    "with the parameters it starts from; check their initial values, what its networks "
    "compute, and the data's scale"
)


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` sees after each step. ``elbo`` is per datapoint (see ``fit``)."""

    step: int
    epoch: int
    elbo: float
    time_s: float
    batch: Batch  # the minibatch's arguments; ``batch.args[0]`` is ``x`` of ``model(x)``


@dataclass
class Trainer:
    """A configured run: the prepared pair, its ELBO and optimizer, the data and settings.

    ``per_datapoint`` is the number of rows whose ELBO one step's loss estimates (the batch,
    or all N rows when global latents make each step a full-data estimate).
    """

    model: Callable
    guide: Callable
    elbo: pyro.infer.ELBO
    optim: pyro.optim.PyroOptim
    dataset: Dataset
    group: distributed.World
    beta: LatentScale
    kl_warmup: int
    per_datapoint: int
    device: torch.device
    saver: Checkpointer | None = None
    step_params: StepParams = field(default_factory=StepParams)

    def update(self, state: TrainingState, validated: bool) -> StepInfo:
        """Take step ``state.step + 1``, with Pyro's validation on if ``validated``, and record
        it in ``state``.

        Raises:
            NumericalError: a non-finite loss or gradient, or a distribution given an invalid
                parameter; nothing was applied, ``state`` is unchanged.
            PairError: the pair raised an exception of its own (its ``__cause__``), named with
                the step and where in the pair it was raised; nothing was applied.
        """
        started = time.perf_counter()
        step = state.step + 1
        epoch, index = state.order.batch(step)
        rows = distributed.shard(index, self.group)
        x = self.dataset.take(rows).to(self.device, non_blocking=True)
        self.beta.beta = kl_weight(step, self.kl_warmup)
        try:
            with _validation(validated):
                loss, finite = svi_step(self.elbo, self.optim, self.model, self.guide, x,
                                        self.group, self.step_params)
        except DataError as e:  # a value outside its batch's support (preflight.SupportCheck)
            raise DataError(
                f"training stopped at step {step}: {first_line(e)}; nothing was applied"
            ) from e
        except PplVaeError:
            raise
        except Exception as e:  # the pair's own code (or torch inside it) raised
            raised = pair_exception(e)
            raise self.failure(step, math.nan, x, rows, validated, state, raised) from raised
        if not (finite and math.isfinite(loss)):
            raise self.failure(step, loss, x, rows, validated, state)
        value = -loss / self.per_datapoint
        state.elapsed += time.perf_counter() - started
        state.rows.append((step, epoch, value, self.beta.beta, state.elapsed))
        state.step = step
        return StepInfo(step, epoch, value, state.elapsed, x)

    def failure(
        self, step: int, loss: float, x: Batch, rows: torch.Tensor, validated: bool,
        state: TrainingState, error: Exception | None = None,
    ) -> PplVaeError:
        """The error for a failed step on the minibatch ``x`` of data rows ``rows``, naming the
        step: a :class:`DataError` for an observed value outside its support; a
        :class:`PairError` saying where ``error`` was raised when it is not about a
        distribution's parameter; otherwise a :class:`NumericalError` naming the sites with a
        non-finite log-density, the invalid parameter when Pyro's validation finds one on this
        minibatch, a data entry whose square overflows, and the fix."""
        invalid = error if validated else _validation_error(self.model, self.guide, x)
        if isinstance(invalid, ValueError) and "within the support" in str(invalid):
            return DataError(
                f"training stopped at step {step}: a value observed in its minibatch lies "
                f"outside the support its distribution has ({first_line(invalid)}); fix or "
                "drop those rows, or choose a likelihood whose support holds them; nothing was "
                "applied"
            )
        kept = ("the parameters keep their values from the last good step"
                if state.rows else "the parameters keep the values they started from")
        kept += f"; {self.saver.kept()}" if self.saver else ""
        if error is not None and not is_invalid_parameter(invalid):
            return PairError(
                f"training stopped at step {step}: {type(error).__name__}: {_reason(error)} "
                f"(raised at {raised_at(error)}); nothing was applied: {kept}"
            )
        bad = _non_finite_sites(self.model, self.guide, x)
        where = (
            f"non-finite log-density at site(s) {bad}"
            if bad
            else "the log-densities are finite now, so a gradient overflowed"
        )
        problem = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'}"
        if is_invalid_parameter(invalid):
            problem = f"a distribution's parameter is invalid ({first_line(invalid)})"
        cause = overflowing_data(x, rows)
        fix = "try a lower lr, clip_norm=10.0, or rescaling the data"
        if cause:
            fix = "rescale the data (e.g. standardize each column)"
        elif not state.rows:
            fix = FIRST_STEP_FIX
        return NumericalError(
            f"training stopped at step {step}: {problem} ({where}){cause}; {kept}; {fix}",
            history=history(state.rows),
        )


def history(rows: list[tuple]) -> pd.DataFrame:
    """The history rows as a DataFrame with :data:`HISTORY_COLUMNS`."""
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def svi_step(elbo, optim, model, guide, x: Batch, group: distributed.World,
             step_params: StepParams | None = None) -> tuple[float, bool]:
    """One ``SVI.step``: (loss, gradients finite). Nothing is applied unless both are finite.

    ``step_params`` finds the parameters the step read (see ``ppl_vae.step_params``); with
    several processes, gradients and loss are averaged over them first (by name order).
    """
    if getattr(elbo, "update", None) is not None:  # a compiled step that applies the update
        return elbo.step(model, guide, *x.args, **x.kwargs)
    params = getattr(elbo, "params", None)  # a compiled ELBO knows its parameters
    if params is None:
        loss, params = (step_params or StepParams()).loss_and_grads(elbo, model, guide, x)
    else:
        loss = elbo.loss_and_grads(model, guide, *x.args, **x.kwargs)
    if group.size > 1:
        loss = distributed.average_gradients(params, loss)
    grads = [p.grad for p in params if p.grad is not None]
    # one host sync: a sum of norms is finite iff every gradient entry is
    finite = not grads or math.isfinite(float(torch.stack(torch._foreach_norm(grads)).sum()))
    if finite and math.isfinite(loss):
        optim(params)
    for p in params:  # freed, not zeroed: the next backward writes instead of accumulating
        p.grad = None
    return loss, finite


def _validation(on: bool):
    """Pyro's validation as the user set it (``on``), or switched off for this step."""
    return contextlib.nullcontext() if on else pyro.validation_enabled(False)


def _validation_error(model, guide, x: Batch) -> ValueError | None:
    """The ``ValueError`` (an invalid parameter) that running the pair on ``x`` raises under
    the user's validation setting, or None; the random streams are untouched."""
    with forked(), torch.no_grad():
        try:
            run_pair(model, guide, x)
        except PairError as e:
            return e.__cause__ if isinstance(e.__cause__, ValueError) else None
        except Exception:  # the pair's own exception, not about a parameter
            return None
    return None


def _non_finite_sites(model, guide, x: Batch) -> list[str]:
    """The sample sites whose log-density is non-finite on ``x`` (validation off), as far as
    the pair runs and its log-densities can be computed."""
    bad = []
    with forked(), torch.no_grad(), pyro.validation_enabled(False):
        try:
            traces = run_pair(model, guide, x)
            for trace in (traces.guide, traces.model):
                trace.compute_log_prob()
                for name, site in trace.nodes.items():
                    if (is_latent(site) or is_likelihood(site)) and not bool(
                        torch.isfinite(site["log_prob"]).all()
                    ):
                        bad.append(name)
        except Exception:  # the pair fails to run, or to score a site, on x
            pass
    return sorted(set(bad))


def overflowing_data(x: Batch, rows: torch.Tensor) -> str:
    """Where the minibatch ``x`` (data rows ``rows``) holds an entry whose square overflows its
    dtype, a clause naming it by data row and column; else ''."""
    names = [f"arg{i}" for i in range(len(x.args))] + list(x.per_row)
    for name, tensor in zip(names, x.tensors, strict=True):
        found = first_overflowing(tensor)
        if found is not None:
            row, column, value = found
            array = f" ({name})" if len(names) > 1 else ""
            return (
                f"; the data{array} holds {value:g} at row {int(rows[row])}, column {column} "
                f"(from 0), whose square overflows {str(tensor.dtype).removeprefix('torch.')}"
            )
    return ""


def _reason(error: BaseException) -> str:
    """An exception's first message line, followed by that of the exception it was raised
    from where the line only introduces it (Pyro's "Error while computing log_prob at site
    'x':")."""
    line = first_line(error)
    cause = error.__cause__
    return f"{line} {first_line(cause)}" if line.endswith(":") and cause is not None else line
