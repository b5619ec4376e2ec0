"""Training one (estimator, seed) run of a comparison and measuring it along the way.

:func:`measure_runs` trains every estimator from every seed's initial parameters, isolated
from the caller's param store, modules and RNGs, and returns one :class:`RunRecord` each:
estimate and gradient variance at the checkpoints, held-out ELBO at the evaluation steps, and
the final quality and cost (definitions in :mod:`ppl_vae.comparison` and docs/estimators.md).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyro
import pyro.util
import torch
from tqdm.auto import tqdm

from ..estimators.estimators import get
from ..estimators.kl import KLFallbackWarning
from ..evaluation.evaluation import evaluate
from ..evaluation.gap import inference_gap
from ..evaluation.predictive import elpd, pointwise_table, summary
from ..evaluation.variance import check_estimators, estimate_draws, gradient_variance
from ..pair.dataset import Batch, Dataset
from ..pair.traces import run_pair
from ..training.training import fit
from ..utils import params as param_io
from ..utils.errors import PairError
from ..utils.rng import derived_seed


@dataclass
class RunRecord:
    """What one (estimator, seed) run measured; the tables are made of these."""

    estimator: str
    seed: int
    final: dict[str, float] = field(default_factory=dict)
    gradients: list[pd.DataFrame] = field(default_factory=list)
    draws: list[pd.DataFrame] = field(default_factory=list)
    test_elbo: dict[int, float] = field(default_factory=dict)
    history: pd.DataFrame | None = None
    sites: pd.DataFrame | None = None
    gap_skipped: str | None = None  # why the gap split was not measured
    pointwise: pd.DataFrame | None = None  # the held-out ELPD per datapoint (elpd, k̂, iwae)


def measure_runs(
    model: Callable,
    guide: Callable,
    dataset: Dataset,
    held_out: Dataset,
    probe: Batch,
    settings,
    modules=(),
    exact_log_likelihood=None,
) -> list[RunRecord]:
    """Train and measure every (seed, estimator) of ``settings`` (a ComparisonSettings)."""
    device = torch.device(settings.device)
    bar = tqdm(
        total=len(settings.seeds) * len(settings.estimators) * settings.num_steps,
        disable=not settings.progress, desc="compare", unit="step",
    )
    records: list[RunRecord] = []
    try:
        with _isolated(model, guide, probe, modules, device) as created, warnings.catch_warnings():
            warnings.simplefilter("ignore", KLFallbackWarning)
            with torch.no_grad():  # every estimator fits the pair, before any training
                check_estimators(run_pair(model, guide, probe.to(device)), settings.estimators)
            pair = set(pyro.get_param_store().keys())
            for seed in settings.seeds:  # what a run created (a baseline's average) is dropped
                param_io.forget(set(pyro.get_param_store().keys()) - pair)
                initial = _initial_parameters(model, guide, probe, created, modules, seed, device)
                for estimator in settings.estimators:
                    param_io.reset(initial)
                    bar.set_description(f"compare[{estimator}, seed {seed}]")
                    run = _Run(model, guide, estimator, int(seed), settings, probe)
                    run.train(dataset, held_out, bar)
                    run.finish(held_out, exact_log_likelihood, held_out is not dataset)
                    records.append(run.record)
    finally:
        bar.close()
    return records


@contextlib.contextmanager
def _isolated(model, guide, probe, modules, device) -> Iterator[set[str]]:
    """Leave Pyro's param store, the pair's modules and Pyro's RNGs as they were found (the
    values; like ``fit``, the parameters are left on ``device``).

    Yields the names of the parameters the pair creates itself (absent before).
    """
    rng = pyro.util.get_rng_state()
    original = {}
    try:
        with param_io.created() as new:
            try:
                for module in modules:
                    module.to(device)
                with param_io.created() as own, torch.no_grad():
                    run_pair(model, guide, probe.to(device))  # registers every parameter
                param_io.to_device(device)
                original = param_io.snapshot()
                yield own
            finally:
                store = pyro.get_param_store()
                param_io.restore({n: v for n, v in original.items() if n in store})
    finally:
        param_io.forget(new)
        pyro.util.set_rng_state(rng)


def _initial_parameters(
    model, guide, probe, created, modules, seed, device
) -> dict[str, torch.Tensor]:
    """Seed ``seed``'s initial parameters (module doc), returned as a snapshot."""
    pyro.set_rng_seed(int(seed))
    param_io.forget(created)
    with torch.no_grad():
        for module in modules:
            for layer in module.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        run_pair(model, guide, probe.to(device))
    param_io.to_device(device)
    return param_io.snapshot()


def _joint_se(terms: pd.DataFrame) -> float:
    """The standard error of the mean row's ELBO: without global latents the rows' draws are
    independent (their variances add); with them, the joint estimate's own."""
    if terms.attrs["global_sites"]:
        return terms.attrs["joint"]["elbo_se"] / len(terms)
    return float(np.sqrt((terms["elbo_se"] ** 2).sum()) / len(terms))


class _Run:
    """One (estimator, seed) training run and everything measured along it."""

    def __init__(self, model, guide, estimator: str, seed: int, settings, probe: Batch):
        self.model, self.guide, self.settings, self.probe = model, guide, settings, probe
        self.record = RunRecord(estimator, seed)
        self.estimator, self.seed = estimator, seed
        # per training step: K for an importance-weighted estimator, else 1
        self.particles = get(estimator).particles_per_draw(settings.iwae_particles)

    def measure(self, step: int) -> None:
        """Estimate and gradient variance on the probe minibatch at the current parameters."""
        x = self.probe.to(param_io.device())
        tags = {"run": self.estimator, "seed": self.seed, "step": step}
        how = dict(
            num_draws=self.settings.num_draws,
            iwae_particles=self.settings.iwae_particles,
            seed=derived_seed(self.seed, step),
        )
        estimators = self.settings.estimators
        grads = gradient_variance(self.model, self.guide, x, estimators, **how)
        draws = estimate_draws(self.model, self.guide, x, estimators, **how)
        self.record.gradients.append(grads.assign(**tags))
        self.record.draws.append(draws.assign(**tags))

    def evaluate(self, step: int, held_out: Dataset) -> None:
        terms = evaluate(self.model, self.guide, held_out, self.settings.eval_particles,
                         seed=derived_seed(self.seed, step))
        self.record.test_elbo[step] = terms.attrs["joint"]["elbo"] / len(terms)

    def train(self, dataset: Dataset, held_out: Dataset, bar) -> None:
        checkpoints, evals = set(self.settings.checkpoints()), self.settings.evals()
        self.measure(0)
        self.evaluate(0, held_out)

        def callback(info) -> None:
            if info.step in checkpoints:
                self.measure(info.step)
            if info.step in evals:
                self.evaluate(info.step, held_out)
            bar.update()

        s = self.settings
        result = fit(self.model, self.guide, dataset, estimator=self.estimator, seed=self.seed,
                     num_particles=self.particles, callback=callback, num_steps=s.num_steps,
                     batch_size=s.batch_size, lr=s.lr, device=torch.device(s.device))
        self.record.history, self.record.sites = result.history, result.sites
        self.train_elbo = result.final_elbo

    def finish(self, held_out: Dataset, exact, unseen: bool) -> None:
        """Final held-out quality, cost, and the memory of one training step; ``unseen``:
        the held-out rows are not the training rows."""
        x = held_out.to(param_io.device())
        history = self.record.history
        seed = derived_seed(self.seed, len(history) + 1)
        terms = evaluate(self.model, self.guide, x, self.settings.final_particles, seed=seed)
        elbo = terms.attrs["joint"]["elbo"] / len(terms)  # the mean row's, globals included
        with warnings.catch_warnings():  # k̂ is in the record, and in the report's az.compare
            warnings.simplefilter("ignore", UserWarning)
            predictive = elpd(self.model, self.guide, x, self.settings.ll_samples,
                              held_out=unseen, seed=seed)
        self.record.pointwise = pointwise_table(predictive)
        totals = summary(predictive)
        rows = totals["n_data_points"]
        final = {
            "test_elbo": elbo,
            "test_elbo_se": _joint_se(terms),
            "log_likelihood": totals["iwae"] / rows,
            "elpd": totals["elpd"] / rows,
            "elpd_se": totals["se"] / rows,
            "elpd_p": totals["p"],
            "khat_above": float(totals["khat_above"]),
            "train_elbo": self.train_elbo,
            "ms_per_step": 1e3 * float(np.median(np.diff(history["time_s"], prepend=0.0))),
            **self._step_memory(),
            "seconds": float(history["time_s"].iloc[-1]),
        }
        if exact is not None and x.single is not None:
            with torch.no_grad():
                exact_ll = float(exact(x.single).mean())
            final |= {"exact_log_likelihood": exact_ll, "gap": exact_ll - elbo}
        if self.settings.gap_rows:
            final |= self._gap_split(x, exact, seed)
        self.record.final = final

    def _gap_split(self, held_out: Dataset, exact, seed: int) -> dict[str, float]:
        """The amortization and approximation gaps, mean per datapoint over the first
        ``gap_rows`` held-out rows (:func:`~ppl_vae.inference_gap`), with their Monte Carlo
        standard errors; nothing when the pair has no such split (the reason is kept)."""
        rows = held_out.first(self.settings.gap_rows)
        try:
            gap = inference_gap(self.model, self.guide, rows, num_steps=self.settings.gap_steps,
                                seed=seed, exact_log_likelihood=exact if rows.single is not None
                                else None)
        except PairError as e:
            self.record.gap_skipped = str(e)
            return {}
        mean = gap.attrs["mean"]
        return {
            "amortization_gap": mean["amortization_gap"]["mean"],
            "amortization_gap_se": mean["amortization_gap"]["se"],
            "approximation_gap": mean["approximation_gap"]["mean"],
            "approximation_gap_se": mean["approximation_gap"]["se"],
            "gap_still_improving": float(gap.attrs["still_improving"]),
        }

    def _step_memory(self) -> dict[str, float]:
        """Memory of one loss-and-gradient pass on the probe minibatch (module doc, item 4)."""
        x = self.probe.to(param_io.device())
        layout = run_pair(self.model, self.guide, x)
        elbo = get(self.estimator).make(self.particles, layout.max_plate_nesting)
        params = {p.data_ptr() for _, p in pyro.get_param_store().named_parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        cuda = x.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(x.device)
            base = torch.cuda.memory_allocated(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            pyro.poutine.trace(param_only=True) as capture,
        ):
            elbo.loss_and_grads(self.model, self.guide, *x.args, **x.kwargs)
        peak = (torch.cuda.max_memory_allocated(x.device) - base) / 2**20 if cuda else math.nan
        pyro.infer.util.zero_grads(
            {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        )
        return {"graph_mb": sum(saved.values()) / 2**20, "cuda_peak_mb": peak}


