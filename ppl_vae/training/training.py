"""``fit``: stochastic variational inference with the sampled- or analytic-KL ELBO.

``fit`` checks its arguments, prepares the pair (probe, KL labels, N/B scaling of the data
plate, data-parallel sharding, KL warm-up), and then runs the loop: one
:meth:`~ppl_vae.training.svi.Trainer.update` per step on an explicit
:class:`~ppl_vae.training.svi.TrainingState`, followed by its hooks (progress bar, the user's
callback, the checkpointer). Minibatches are drawn by index from the in-memory (or memory-mapped)
data, one seeded permutation per epoch, with no DataLoader in the way.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import pyro.optim
import torch
from tqdm.auto import tqdm

from ..estimators.estimators import get
from ..estimators.kl import check_enumerates, check_fallback, check_reparameterized, kl_sites
from ..optim import ForeachAdam
from ..pair.dataset import Batch, as_dataset
from ..utils import params as param_io
from ..utils.errors import (
    PplVaeError,
    check_integers,
    check_positive,
    check_seed,
)
from ..utils.rng import forked
from . import distributed
from .checkpoint import Checkpointer, fingerprint
from .compiled import check_options, compile_elbo
from .plates import scale_data_plate
from .preflight import (
    check_autoguide,
    check_batch_supports,
    check_broadcasting,
    check_warmup,
    probe,
)
from .state import MinibatchOrder, TrainingState
from .svi import StepInfo, Trainer, history
from .warmup import LatentScale, anneal

DEFAULT_BATCH_SIZE = 128
# Pyro's Trace_ELBO warns about guide sites marked for enumeration, which it samples
ENUMERATION_HINT = r"(?s).*If you want to enumerate sites, you need to use TraceEnum_ELBO"


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
        compile_s: with ``compile``, the seconds that tracing and compiling the step took
            (not in ``history``'s ``time_s``); None when the step ran eagerly.
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
    compile_s: float | None = None

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
    compile: bool | str = False,
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
        estimator: ``"sampled"`` (``Trace_ELBO``: KL by Monte Carlo, log q − log p),
            ``"analytic"`` (``TraceMeanField_ELBO``: closed-form KL where registered), or any
            other name in :data:`~ppl_vae.ESTIMATORS` (``stl``, ``iwae``, ``dreg``, ``enum``,
            ``graph``, ``graph_avg``; docs/estimators.md).
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
        jit: compile the ELBO with PyTorch's JIT (estimators with a compiled variant, see
            ``ppl_vae.estimators``); the pair must run the same code every step.
        compile: trace the pair's loss once and compile it with ``torch.compile`` (``True``:
            TorchInductor; or a backend name, ``"aot_eager"`` for bitwise the eager numbers),
            for Trace_ELBO-type estimators (``sampled``, ``analytic``, ``stl``) and pairs whose
            structure does not change between steps (see ``ppl_vae.compiled``). The same
            draws as the eager step, numbers equal up to float rounding; a pair that cannot
            be traced trains eagerly after a ``CompileFallbackWarning``. The compile time is
            ``FitResult.compile_s``.
        validate_every_step: run Pyro's validation (``pyro.enable_validation``, on unless
            switched off) on every step, not on the first step of the call only. What it
            checks of site shapes, the model/guide match and the data's support cannot change
            between steps (the data is checked whole up front); what can, a parameter leaving
            its support, mostly makes a log-density non-finite, which every step catches before
            the update (the error then names the parameter by validating that minibatch). A
            distribution that clamps an invalid parameter instead (Bernoulli ``probs`` outside
            [0, 1]) trains on silently without this flag: constrain such parameters
            (``pyro.param(..., constraint=...)``, a sigmoid). Its cost per step is measured
            by ``make bench`` (docs/performance.md).
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
    dataset = as_dataset(data, model_kwargs)
    if batch_size is None:
        batch_size = min(DEFAULT_BATCH_SIZE, dataset.rows)
    _check_arguments(dataset, batch_size, num_steps, num_particles, lr, kl_warmup, jit, optim,
                     clip_norm, seed)
    check_options(compile, jit=jit, kl_warmup=kl_warmup, validate_every_step=validate_every_step)
    saver = None  # refuses a checkpoint_dir that holds a checkpoint unless resuming
    if checkpoint_dir is not None or resume:
        saver = Checkpointer(checkpoint_dir, checkpoint_every, resume)
    options = dict(batch_size=batch_size, seed=seed, lr=lr, num_particles=num_particles,
                   kl_warmup=kl_warmup, clip_norm=clip_norm, jit=jit)
    if compile:  # only then in the fingerprint: earlier checkpoints stay resumable
        options["compile"] = "inductor" if compile is True else compile
    with saver.locked() if saver else contextlib.nullcontext(), warnings.catch_warnings():
        trainer, state, sites = _setup(model, guide, dataset, record, saver, optim, num_steps,
                                       param_io.check_device(device), strict, options)
        if (sites["enumerated"] == "guide").any():  # sampled on purpose; sites says so
            warnings.filterwarnings("ignore", ENUMERATION_HINT, UserWarning)
        first, stopped = state.step + 1, False
        show = progress and trainer.group.rank == 0
        with _progress(show, num_steps, state.step, record.name) as bar:
            for step in range(first, num_steps + 1):
                info = trainer.update(state, validate_every_step or step == first)
                bar(info)
                stopped = callback is not None and bool(callback(info))
                if saver:
                    saver.save(state, trainer.optim, final=stopped or step == num_steps)
                if stopped:
                    break
    return FitResult(
        history=history(state.rows),
        sites=sites,
        params={k: v.cpu() for k, v in param_io.snapshot().items()},
        estimator=record.name,
        seed=seed,
        num_steps=state.step,
        batch_size=batch_size,
        num_particles=num_particles,
        stopped_early=stopped,
        compile_s=getattr(trainer.elbo, "compile_s", None),
    )


def _setup(model, guide, dataset, record, saver, optim, num_steps, device, strict, options):
    """Everything before the first step: seeding, the prepared pair, its ELBO and optimizer,
    and the training state, restored from the checkpoint when resuming.
    Returns ``(trainer, state, sites)``."""
    batch_size, seed, particles = options["batch_size"], options["seed"], options["num_particles"]
    pyro.set_rng_seed(seed)
    group = distributed.world()
    distributed.check_batch(batch_size, group)
    layout, sites, model, guide, beta, per_datapoint = _prepare(
        model, guide, dataset, record, batch_size, device, group, seed, strict,
        options["kl_warmup"],
    )
    if particles > 1:
        check_broadcasting(model, guide, dataset.head(batch_size // group.size).to(device),
                            layout, particles, record.enumerates)
    elbo = record.make(particles, layout.max_plate_nesting, jit=options["jit"])
    if options["jit"]:
        _compile(elbo, model, guide, dataset.head(batch_size // group.size), device)
    if optim is None:
        clip = options["clip_norm"]
        optim = ForeachAdam({"lr": options["lr"]}, {"clip_norm": clip} if clip is not None else {})
    state = TrainingState(MinibatchOrder(dataset.rows, batch_size, seed))
    dataset = dataset.to(device)
    if saver:  # resume: parameters in place, optimizer, RNGs, the training state
        if group.size > 1:
            raise PplVaeError("checkpoints need a single process; drop checkpoint_dir or nproc")
        where = fingerprint(layout, dataset, estimator=record.name, **options)
        saver.restore(where, optim, state, num_steps)
    if options.get("compile"):  # after restoring: traced on the parameters it trains
        elbo = compile_elbo(elbo, model, guide, dataset.head(batch_size), options["compile"],
                            processes=group.size, optim=optim) or elbo
    trainer = Trainer(model, guide, elbo, optim, dataset, group, beta, options["kl_warmup"],
                      per_datapoint, device, saver)
    return trainer, state, sites


def _check_arguments(dataset, batch_size, num_steps, num_particles, lr, kl_warmup, jit, optim,
                     clip_norm, seed) -> None:
    """Refuse bad settings before anything runs, each with the fix."""
    check_positive(num_steps=num_steps, batch_size=batch_size, num_particles=num_particles)
    check_integers(0, kl_warmup=kl_warmup)
    check_seed(seed)
    if not (isinstance(lr, numbers.Real) and lr > 0 and math.isfinite(lr)):
        raise PplVaeError(f"lr must be a finite number > 0, not {lr}")
    if clip_norm is not None and not (
        isinstance(clip_norm, numbers.Real) and clip_norm > 0 and math.isfinite(clip_norm)
    ):
        raise PplVaeError(
            f"clip_norm must be a finite number > 0, not {clip_norm} (0 stops training, a "
            "negative norm turns the steps into gradient ascent); try clip_norm=10.0"
        )
    if jit and kl_warmup:
        raise PplVaeError("kl_warmup changes the model every step, so it cannot be compiled; "
                          "drop jit=True or kl_warmup")
    if optim is not None and clip_norm is not None:
        raise PplVaeError("clip_norm applies to the default optimizer; pass clip_args to optim")
    if jit and (dataset.keyword or dataset.extras):
        raise PplVaeError("jit=True compiles positional tensor arguments only; pass the data "
                          "as a tuple (model(x, y)) without model_kwargs, or drop jit=True")
    dataset.validate(batch_size)


def _prepare(model, guide, dataset, record, batch_size, device, group, seed, strict, kl_warmup):
    """Probe the pair, label and check its sites, and wrap model and guide for training:
    N/B scaling of the data plate with global latents, data-parallel sharding, KL warm-up.
    Returns ``(layout, sites, model, guide, beta, per_datapoint)``, the last the number of rows
    whose ELBO one step's loss estimates: the batch, or all N rows when it is scaled."""
    layout = probe(model, guide, dataset, batch_size // group.size, device)
    sites = kl_sites(layout, record)
    check_enumerates(sites, record)
    check_warmup(sites, kl_warmup)
    check_reparameterized(sites, record)
    record.check_pair(layout)
    check_fallback(sites, record, strict)
    check_autoguide(guide, layout, batch_size, dataset.rows)
    model = check_batch_supports(model, layout)
    per_datapoint = batch_size
    if layout.global_sites():  # then each step estimates the full-data ELBO
        model = scale_data_plate(model, dataset.rows / batch_size, layout.data_plate)
        guide = scale_data_plate(guide, dataset.rows / batch_size, layout.data_plate)
        per_datapoint = dataset.rows
    if group.size > 1:  # data-parallel: same start everywhere, independent noise per rank
        distributed.broadcast_params()
        pyro.set_rng_seed(seed + group.rank)
        model = distributed.shard_scaled(model, group, layout.data_plate)
        guide = distributed.shard_scaled(guide, group, layout.data_plate)
    beta = LatentScale()
    if kl_warmup:
        model, guide = anneal(model, beta), anneal(guide, beta)
    return layout, sites, model, guide, beta, per_datapoint


@contextlib.contextmanager
def _progress(show: bool, total: int, done: int, name: str):
    """A tqdm bar with the running ELBO (an exponential average), as a per-step hook."""
    bar = tqdm(total=total, initial=done, disable=not show, desc=f"fit[{name}]", unit="step")
    running = math.nan

    def hook(info: StepInfo) -> None:
        nonlocal running
        running = info.elbo if math.isnan(running) else 0.98 * running + 0.02 * info.elbo
        bar.update()
        if info.step % 50 == 0 or info.step == total:
            bar.set_postfix(elbo=f"{running:.3f}", refresh=False)

    try:
        yield hook
    finally:
        bar.close()


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
