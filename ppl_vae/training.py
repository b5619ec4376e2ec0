"""``fit``: stochastic variational inference with the sampled- or analytic-KL ELBO.

The loop is Pyro's ``SVI.step`` (Hoffman et al. 2013; Kingma & Welling 2014) written out so
that a non-finite loss or gradient is caught *before* the optimizer applies it: minibatches
are drawn by index from the in-memory (or memory-mapped) data, one seeded permutation per
epoch, with no DataLoader in the way.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from tqdm.auto import tqdm

from . import distributed
from . import params as param_io
from .checkpoint import Checkpointer, fingerprint
from .data import check_support
from .dataset import Batch, Dataset, as_dataset
from .errors import NumericalError, PairError, PplVaeError
from .estimators import get
from .kl import check_fallback, check_reparameterized, kl_sites
from .optim import ForeachAdam
from .plates import scale_data_plate
from .rng import forked
from .traces import PairTraces, is_guide_sample, is_latent, is_observed, run_pair
from .warmup import LatentScale, anneal, kl_weight

HISTORY_COLUMNS = ["step", "epoch", "elbo", "beta", "time_s"]
DEFAULT_BATCH_SIZE = 128


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` sees after each step. ``elbo`` is per datapoint of the minibatch."""

    step: int
    epoch: int
    elbo: float
    time_s: float
    batch: Batch  # the minibatch's arguments; ``batch.args[0]`` is ``x`` of ``model(x)``


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`fit`.

    Attributes:
        history: one row per step: ``step``, ``epoch``, ``elbo`` (the minibatch estimate per
            datapoint; during KL warm-up the β-weighted objective), ``beta``, ``time_s``
            (training wall-clock seconds, callbacks excluded).
        sites: per latent site, q and p, whether a closed-form KL is registered, and how this
            estimator computed the KL (``"closed-form"`` or ``"sampled"``).
        params: the trained unconstrained parameters (CPU copies); the live ones stay in
            Pyro's param store, as after ``SVI``.
    """

    history: pd.DataFrame
    sites: pd.DataFrame
    params: dict[str, torch.Tensor]
    estimator: str
    seed: int
    num_steps: int
    batch_size: int
    num_particles: int
    stopped_early: bool

    @property
    def final_elbo(self) -> float:
        """Mean training ELBO per datapoint over the last 10% of steps (at least one)."""
        tail = max(1, len(self.history) // 10)
        return float(self.history["elbo"].iloc[-tail:].mean())


def fit(
    model: Callable,
    guide: Callable,
    data,
    *,
    estimator: str = "sampled",
    num_steps: int = 1000,
    batch_size: int | None = None,
    lr: float = 1e-3,
    optim: pyro.optim.PyroOptim | None = None,
    num_particles: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    kl_warmup: int = 0,
    clip_norm: float | None = None,
    strict: bool = False,
    progress: bool = False,
    callback: Callable[[StepInfo], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    jit: bool = False,
    validate_every_step: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> FitResult:
    """Fit ``guide`` to ``model`` on ``data`` by SVI, in Pyro's global param store.

    Args:
        model, guide: plain Pyro functions of a minibatch (first dim: the data plate).
        data: one array (tensor, numpy array, memory-mapped ``.npy``, DataFrame), passed as
            ``model(x)``; a tuple of per-row arrays, passed positionally (``model(x, y)``); or a
            dict of them, passed by keyword. All are minibatched with one index; a floating
            dtype is kept (see docs/pairs.md).
        estimator: ``"sampled"`` (``Trace_ELBO``: KL by Monte Carlo, log q − log p) or
            ``"analytic"`` (``TraceMeanField_ELBO``: closed-form KL where registered).
        num_steps, batch_size, lr: SVI steps, rows per minibatch (default 128, or all rows
            when there are fewer), Adam's learning rate. With global latents (guide sites
            outside the data plate) the data-plate sites are scaled by N/B, so each step's
            objective is an unbiased estimate of the full-data ELBO.
        optim: any ``pyro.optim`` optimizer instead of the default Adam at ``lr``
            (:class:`~ppl_vae.optim.ForeachAdam`: the numbers of ``pyro.optim.Adam``, one
            multi-tensor update for all parameters).
        num_particles: ELBO particles per step, vectorized.
        seed: seeds Pyro's RNGs and the minibatch order; the same seed gives the same run.
        device: where minibatches and parameters live (``"cpu"``, ``"cuda"``).
        kl_warmup: W > 0 scales the latent sites by β = min(1, step/W) (see ``warmup``).
        clip_norm: clip each parameter's gradient norm (default optimizer only).
        strict: raise instead of warning when ``"analytic"`` must sample some site's KL.
        progress: show a tqdm bar with the running ELBO.
        callback: called after every step with a :class:`StepInfo`; returning True stops.
        checkpoint_dir: save a checkpoint (see ``ppl_vae.checkpoint``) to
            ``checkpoint_dir/checkpoint.pt`` every ``checkpoint_every`` steps and at the end.
        resume: continue from the checkpoint in ``checkpoint_dir`` (if there is one yet): the
            result is bitwise that of the uninterrupted run, ``time_s`` continuing from the
            checkpoint. A mismatched pair, data or setting is refused, naming what differs.
        jit: compile the ELBO with PyTorch's JIT (``"sampled"`` only, where it measured
            faster; see docs/performance.md); the pair must run the same code every step.
        validate_every_step: run Pyro's validation (``pyro.enable_validation``, on unless
            switched off) on every step, not on the first step of the call only. What it
            checks of site shapes, the model/guide match and the data's support cannot change
            between steps (the data is checked whole up front); what can, a parameter leaving
            its support, mostly makes a log-density non-finite, which every step catches before
            the update (the error then names the parameter by validating that minibatch). A
            distribution that clamps an invalid parameter instead (Bernoulli ``probs`` outside
            [0, 1]) trains on silently without this flag: constrain such parameters
            (``pyro.param(..., constraint=...)``, a sigmoid). Validation cost 7-15% of a step
            in ``make bench`` (docs/performance.md).
        model_kwargs: constant keyword arguments passed to model and guide with every step.

    Parameters already in the param store are trained further; call
    ``pyro.clear_param_store()`` first for a fresh start.

    Raises:
        PplVaeError: a user error (data, pair, estimator), with the fix in its message.
        NumericalError: a non-finite loss or gradient; the parameters keep their last good
            values, ``error.history`` holds the steps before it and the last good checkpoint
            is kept.
        CheckpointError: a corrupt or mismatched checkpoint, or ``checkpoint_dir`` holds one
            and ``resume`` is False.
    """
    record = get(estimator)
    estimator = record.name
    dataset = as_dataset(data, model_kwargs)
    n = dataset.rows
    if batch_size is None:
        batch_size = min(DEFAULT_BATCH_SIZE, n)
    _check_positive(num_steps=num_steps, batch_size=batch_size, num_particles=num_particles)
    if not lr > 0:
        raise PplVaeError(f"lr must be > 0, not {lr}")
    if kl_warmup < 0:
        raise PplVaeError(f"kl_warmup must be >= 0 steps, not {kl_warmup}")
    if jit and kl_warmup:
        raise PplVaeError("kl_warmup changes the model every step, so it cannot be compiled; "
                          "drop jit=True or kl_warmup")
    if optim is not None and clip_norm is not None:
        raise PplVaeError("clip_norm applies to the default optimizer; pass clip_args to optim")
    if jit and (dataset.keyword or dataset.extras):
        raise PplVaeError("jit=True compiles positional tensor arguments only; pass the data "
                          "as a tuple (model(x, y)) without model_kwargs, or drop jit=True")
    dataset.validate(batch_size)
    saver = None  # refuses a checkpoint_dir that holds a checkpoint unless resuming
    if checkpoint_dir is not None or resume:
        saver = Checkpointer(checkpoint_dir, checkpoint_every, resume)
    device = torch.device(device)
    pyro.set_rng_seed(seed)

    group = distributed.world()
    distributed.check_batch(batch_size, group)
    layout = _probe(model, guide, dataset, batch_size // group.size, device)
    sites = kl_sites(layout, record)
    check_reparameterized(sites, record)
    check_fallback(sites, record, strict)
    _check_autoguide(guide, layout, batch_size, n)
    scaled = bool(layout.global_sites())  # then each step estimates the full-data ELBO
    if scaled:
        model = scale_data_plate(model, n / batch_size, layout.data_plate)
        guide = scale_data_plate(guide, n / batch_size, layout.data_plate)
    if group.size > 1:  # data-parallel: same start everywhere, independent noise per rank
        distributed.broadcast_params()
        pyro.set_rng_seed(seed + group.rank)
        model = distributed.shard_scaled(model, group, layout.data_plate)
        guide = distributed.shard_scaled(guide, group, layout.data_plate)

    elbo = record.make(num_particles, layout.max_plate_nesting, jit=jit)
    if jit:
        _compile(elbo, model, guide, dataset.head(batch_size // group.size), device)
    beta = LatentScale()
    if kl_warmup:
        model, guide = anneal(model, beta), anneal(guide, beta)
    if optim is None:
        clip = {"clip_norm": clip_norm} if clip_norm is not None else {}
        optim = ForeachAdam({"lr": lr}, clip)

    per_datapoint = n if scaled else batch_size  # the loss estimates this many rows' ELBO
    batches_per_epoch = n // batch_size
    order = torch.Generator().manual_seed(seed)
    dataset = dataset.to(device)
    rows: list[tuple] = []
    elapsed, running, stopped, permutation = 0.0, math.nan, False, None
    if saver:  # resume: parameters in place, optimizer, RNGs, order, history
        if group.size > 1:
            raise PplVaeError("checkpoints need a single process; drop checkpoint_dir or nproc")
        settings = dict(estimator=estimator, batch_size=batch_size, num_particles=num_particles,
                        seed=seed, kl_warmup=kl_warmup, lr=lr, clip_norm=clip_norm, jit=jit)
        where = fingerprint(layout, dataset, **settings)
        rows, elapsed, permutation = saver.restore(where, optim, order, num_steps)
    quiet = not progress or group.rank > 0
    bar = tqdm(total=num_steps, initial=len(rows), disable=quiet, desc=f"fit[{estimator}]",
               unit="step")
    first = len(rows) + 1
    try:
        for step in range(first, num_steps + 1):
            started = time.perf_counter()
            epoch, position = divmod(step - 1, batches_per_epoch)
            if position == 0:
                permutation = torch.randperm(n, generator=order)
            index = permutation[position * batch_size : (position + 1) * batch_size]
            x = dataset.take(distributed.shard(index, group)).to(device, non_blocking=True)
            beta.beta = kl_weight(step, kl_warmup)
            validated = validate_every_step or step == first
            try:
                with _validation(validated):
                    loss, grads_finite = _svi_step(elbo, optim, model, guide, x, group)
            except PplVaeError:
                raise
            except (ValueError, RuntimeError) as e:
                invalid = e if validated else _validation_error(model, guide, x)
                if not isinstance(invalid, ValueError):  # not an invalid parameter
                    raise
                raise _numerical_error(step, math.nan, model, guide, x, rows, saver, invalid) from e
            if not (grads_finite and math.isfinite(loss)):
                invalid = None if validated else _validation_error(model, guide, x)
                raise _numerical_error(step, loss, model, guide, x, rows, saver, invalid)
            value = -loss / per_datapoint
            elapsed += time.perf_counter() - started
            rows.append((step, epoch, value, beta.beta, elapsed))
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
            bar.update()
            if step % 50 == 0 or step == num_steps:
                bar.set_postfix(elbo=f"{running:.3f}", refresh=False)
            info = StepInfo(step, epoch, value, elapsed, x)
            stopped = callback is not None and bool(callback(info))
            if saver:
                final = stopped or step == num_steps
                saver.step_done(step, rows, elapsed, permutation, optim, order, final)
            if stopped:
                break
    finally:
        bar.close()
    return FitResult(
        history=_history(rows),
        sites=sites,
        params={k: v.cpu() for k, v in param_io.snapshot().items()},
        estimator=estimator,
        seed=seed,
        num_steps=len(rows),
        batch_size=batch_size,
        num_particles=num_particles,
        stopped_early=stopped,
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise PplVaeError(f"{name} must be a positive integer, not {value!r}")


def _probe(model, guide, dataset: Dataset, batch_size: int, device: torch.device) -> PairTraces:
    """Run the pair on the first minibatch, check the data's support, move params to device."""
    x = dataset.head(batch_size)
    layout = run_pair(model, guide, x)
    arrays = [a for _, a in dataset.arrays]
    for name, site in layout.model.nodes.items():
        if not is_observed(site):
            continue
        support = site["fn"].support
        whole = [a for a, t in zip(arrays, x.tensors, strict=True) if site["value"] is t]
        if whole:
            check_support(whole[0], name, support, torch.device("cpu"))
        else:
            value = site["value"]
            rows = value.reshape(x.rows, -1) if value.dim() and value.shape[0] == x.rows else value
            check_support(rows.reshape(rows.shape[0] if rows.dim() else 1, -1), name, support,
                          value.device)
    with torch.no_grad():
        for _, unconstrained in pyro.get_param_store().named_parameters():
            unconstrained.data = unconstrained.data.to(device)
    return layout if device.type == "cpu" else run_pair(model, guide, x.to(device))


def _check_autoguide(guide, layout: PairTraces, batch_size: int, rows: int) -> None:
    """An autoguide's local sites have one parameter per row of the plate it first saw: it
    cannot train on minibatches of a larger data set."""
    local = [n for n, s in layout.guide.nodes.items() if is_guide_sample(s) and layout.is_local(s)]
    if isinstance(guide, AutoGuide) and local and batch_size < rows:
        raise PairError(
            f"the autoguide {type(guide).__name__} has local site(s) {local} in the data plate "
            f"{layout.data_plate!r}, whose parameters are one per row of the whole data; train "
            f"it on the whole data (batch_size={rows}) or write an amortized guide"
        )


def _compile(elbo, model, guide, x: Batch, device: torch.device) -> None:
    """Trace a JIT ELBO before training, outside the random streams, freeing its gradients.

    Tracing runs the pair twice more than a step does; done inside step 1 it would shift every
    later draw, and a resumed run (tracing at its first step) would draw other numbers than the
    uninterrupted one.
    """
    with forked():
        x = x.to(device)
        elbo.loss_and_grads(model, guide, *x.args, **x.kwargs)
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None


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
    return None


def _svi_step(elbo, optim, model, guide, x: Batch, group: distributed.World) -> tuple[float, bool]:
    """One ``SVI.step``: (loss, gradients finite). Nothing is applied unless both are finite.

    With several processes, gradients and loss are averaged over them first (by name order).
    """
    with poutine.trace(param_only=True) as capture:
        loss = elbo.loss_and_grads(model, guide, *x.args, **x.kwargs)
    nodes = capture.trace.nodes
    params = [nodes[name]["value"].unconstrained() for name in sorted(nodes)]
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


def _numerical_error(step, loss, model, guide, x, rows, saver, invalid=None) -> NumericalError:
    """Name the step and the sites whose log-density is non-finite on this minibatch.

    ``invalid`` is the ``ValueError`` of Pyro's validation when a distribution was given an
    invalid parameter; the sites are then found by running the pair without validation.
    """
    bad_sites = []
    with torch.no_grad(), pyro.validation_enabled(False):
        try:
            traces = run_pair(model, guide, x)
            for trace in (traces.guide, traces.model):
                trace.compute_log_prob()
                for name, site in trace.nodes.items():
                    if (is_latent(site) or is_observed(site)) and not bool(
                        torch.isfinite(site["log_prob"]).all()
                    ):
                        bad_sites.append(name)
        except PplVaeError:
            pass
    where = (
        f"non-finite log-density at site(s) {sorted(set(bad_sites))}"
        if bad_sites
        else ("the log-densities are finite now, so a gradient overflowed")
    )
    problem = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'}"
    if invalid is not None:
        problem = f"a distribution's parameter is invalid ({str(invalid).strip().splitlines()[0]})"
    kept = f"; {saver.kept()}" if saver else ""
    return NumericalError(
        f"training stopped at step {step}: {problem} ({where}); the parameters keep "
        f"their values from the last good step{kept}; try a lower lr, clip_norm=10.0, or "
        "rescaling the data",
        history=_history(rows),
    )


def _history(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)
