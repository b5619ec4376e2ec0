r"""Simulation-based calibration of an amortized guide (Talts et al. 2018; Yao et al. 2018).

If :math:`\tilde z \sim p(z)` and :math:`\tilde x \sim p(x|\tilde z)`, then :math:`\tilde z`
is a draw of the posterior :math:`p(z|\tilde x)`; so when :math:`q(z|x) = p(z|x)`, the rank of
:math:`\tilde z` among :math:`L` draws :math:`z^{(1..L)} \sim q(z|\tilde x)` is uniform on
:math:`\{0..L\}`, per coordinate (Talts et al. 2018, theorem 1). The ranks' departures from
uniformity say how q is wrong: ranks at both ends mean q is too narrow, in the middle too
wide, at one end that q is shifted (see :mod:`ppl_vae.diagnostics.ranks` for the tests and
verdicts). Yao, Vehtari, Simpson & Gelman (2018, section 4) use the same check for variational
inference: unlike Pareto k̂, which asks whether importance sampling can repair q at one
datapoint, it asks whether q is right *on average over the data the model generates*.

For an amortized guide every simulation is one row: the model is run once with its observed
sites sampled over ``num_simulations`` rows (:mod:`ppl_vae.diagnostics.simulation`), the guide once
on the simulated rows with ``num_draws`` particles vectorized. Ties (discrete latents) are broken at
random, which keeps the ranks uniform (Talts et al. 2018, section 4.1).

Global latents θ are one draw per *data set*: a simulation is then a whole simulated data set,
and q(θ) must be fitted afresh to each one, which costs a training run per simulation. This
is refused unless asked for with ``refit_steps``; each refit starts from the current
parameters, trains the guide only (the model's parameters are held fixed) and is undone
afterwards. Only the global coordinates are ranked then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyro.util
import torch
from pyro import poutine

from ..pair.dataset import Batch, Dataset, as_dataset
from ..pair.traces import PAIR_FAILURES, PairTraces, run_pair, with_particles
from ..training.training import fit
from ..utils import params as param_io
from ..utils.errors import PairError, PplVaeError, check_positive, check_seed
from ..utils.rng import derived_seed, seeded
from . import ranks as rank_tests
from .simulation import Simulated, coordinate_names, rows_first, simulate

MAX_REFITS = 100  # simulations with a refit of q(θ) each, at most


@dataclass(frozen=True)
class Calibration:
    """The ranks of :func:`calibration` and what they say about q.

    Attributes:
        ranks: one row per simulation, one column per latent coordinate (``z[0]``, ...):
            the rank of the true value among ``num_draws`` draws of q, in 0..num_draws.
        tests: one row per coordinate: the location, spread and χ² tests and the
            ``verdict`` (:func:`ppl_vae.diagnostics.ranks.uniformity`).
        sites: each ranked site and its per-row coordinate shape.
        settings: ``num_simulations``, ``num_draws``, ``seed``, ``alpha``, ``threshold``,
            ``global_sites`` and ``refit_steps``.
    """

    ranks: pd.DataFrame
    tests: pd.DataFrame
    sites: dict[str, tuple[int, ...]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """One line: how many coordinates are calibrated, and what is wrong with the others."""
        s, counts = self.settings, self.tests["verdict"].value_counts()
        flagged = {v: int(n) for v, n in counts.items() if n and v != rank_tests.CALIBRATED}
        line = (
            f"SBC ({s['num_simulations']} simulations, {s['num_draws']} draws of q each): "
            f"{int(counts.get(rank_tests.CALIBRATED, 0))} of {len(self.tests)} coordinates "
            "calibrated"
        )
        if not flagged:
            return line + f" (family-wise false-alarm rate {s['alpha']:g})"
        worst = ", ".join(f"{n} {v}" for v, n in flagged.items())
        return line + f"; {worst} (each at family-wise level {s['alpha']:g})"

    def ecdf(self, prob: float = 0.95) -> dict[str, np.ndarray]:
        """ECDF-difference curves and band (:func:`ppl_vae.diagnostics.ranks.ecdf_difference`)."""
        return rank_tests.ecdf_difference(
            self.ranks.to_numpy(), self.settings["num_draws"], prob, self.settings["seed"]
        )

    def plot(self, prob: float = 0.95):
        """The ECDF-difference plot of the ranks with its simultaneous ``prob`` band, one
        panel per coordinate, titled by its verdict (a matplotlib ``Figure``)."""
        from .diagnostic_figures import ecdf_figure

        return ecdf_figure(self.ecdf(prob), list(self.ranks.columns),
                           list(self.tests["verdict"]), prob)

    def to_dataset(self):
        """The ranks as an ``xarray.Dataset``: one variable per site with dims
        ``(simulation, SITE_dim_0, ...)``, the layout of an ArviZ group without chains."""
        import xarray as xr

        variables, start = {}, 0
        for site, shape in self.sites.items():
            size = int(np.prod(shape))
            values = self.ranks.iloc[:, start:start + size].to_numpy().reshape(-1, *shape)
            dims = ["simulation", *[f"{site}_dim_{i}" for i in range(len(shape))]]
            variables[site] = (dims, values)
            start += size
        return xr.Dataset(variables, attrs={k: str(v) for k, v in self.settings.items()})


def calibration(
    model: Callable,
    guide: Callable,
    data,
    num_simulations: int = 1000,
    num_draws: int = 99,
    *,
    seed: int = 0,
    alpha: float = 0.05,
    batch_size: int = 1000,
    refit_steps: int | None = None,
    refit_lr: float = 1e-2,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Calibration:
    """Simulation-based calibration of ``guide`` against ``model`` (module doc).

    Args:
        model, guide: the trained pair (parameters in Pyro's param store).
        data: the template rows (as for :func:`~ppl_vae.evaluate`): the simulations take
            their rows' covariates and ``model_kwargs``; the observed values are replaced by
            draws of the model. Rows are picked at random (with replacement only when
            ``num_simulations`` exceeds the rows).
        num_simulations: S simulated rows (or data sets, with global latents). 1000 detects
            a q whose scale is off by 20% or whose mean is off by 0.15 posterior sds
            (docs/diagnostics.md).
        num_draws: L draws of q per simulation; the ranks take L + 1 values.
        seed: seeds the simulations, the draws and the tie-breaks.
        alpha: the family-wise false-alarm rate: when q is calibrated, the probability that
            any coordinate is flagged is at most ``alpha`` (Bonferroni over 3 tests per
            coordinate; :mod:`ppl_vae.diagnostics.ranks`).
        batch_size: rows simulated and ranked per vectorized pass.
        refit_steps: for a pair with global latents, the SVI steps of the refit of q to each
            simulated data set (at most ``MAX_REFITS`` simulations); refused otherwise.
        refit_lr: Adam's learning rate of those refits.
        model_kwargs: constant keyword arguments passed to model and guide with every call.

    Raises:
        PairError: global latents without ``refit_steps``, or an observed site that does not
            observe a per-row argument as it is.

    A guide site marked for enumeration (``config_enumerate``) is drawn, as q is; a discrete
    site the model sums out (marked there, absent from the guide) is simulated with the rest
    of the model and not ranked: it is no part of q.
    """
    check_positive(num_simulations=num_simulations, num_draws=num_draws, batch_size=batch_size)
    check_seed(seed)
    if not 0 < alpha < 1:
        raise PplVaeError(f"alpha must lie in (0, 1), not {alpha!r}")
    dataset = as_dataset(data, model_kwargs)
    dataset.validate()
    device = param_io.device()
    with seeded(seed), torch.no_grad():
        layout = run_pair(model, guide, dataset.head(batch_size).to(device))
        global_sites = layout.global_latents()
        if global_sites:
            _check_refit(global_sites, refit_steps, num_simulations)
            rng = pyro.util.get_rng_state()  # each refit's fit(seed=...) reseeds them all
            try:
                parts = [_refit_ranks(model, guide, dataset.to(device), num_draws,
                                      derived_seed(seed, s), refit_steps, refit_lr)
                         for s in range(num_simulations)]
            finally:
                pyro.util.set_rng_state(rng)
        else:
            index = _template_rows(dataset.rows, num_simulations)
            parts = [_local_ranks(model, guide, dataset.take(chunk).to(device), num_draws)
                     for chunk in index.split(batch_size)]
    sites = parts[0][1]
    names = [n for site, shape in sites.items() for n in coordinate_names(site, shape)]
    ranks = pd.DataFrame(torch.cat([p[0] for p in parts]).cpu().numpy(), columns=names)
    ranks.index.name = "simulation"
    tests = rank_tests.uniformity(ranks.to_numpy(), num_draws, names, alpha)
    settings = {
        "num_simulations": num_simulations, "num_draws": num_draws, "seed": seed,
        "alpha": alpha, "threshold": tests.attrs["threshold"], "global_sites": global_sites,
        "refit_steps": refit_steps if global_sites else None,
    }
    return Calibration(ranks, tests, sites, settings)


def _check_refit(global_sites: list[str], refit_steps: int | None, num_simulations: int) -> None:
    if refit_steps is None:
        raise PairError(
            f"the pair has global latents {global_sites}: calibrating q(θ) needs a new fit of "
            "the guide to each simulated data set (one training run per simulation); pass "
            f"refit_steps=N (SVI steps per refit) with num_simulations <= {MAX_REFITS} to run "
            "them"
        )
    check_positive(refit_steps=refit_steps)
    if num_simulations > MAX_REFITS:
        raise PairError(
            f"num_simulations={num_simulations} refits of the guide are too many; with global "
            f"latents give num_simulations <= {MAX_REFITS}"
        )


def _template_rows(rows: int, num_simulations: int) -> torch.Tensor:
    if num_simulations <= rows:
        return torch.randperm(rows)[:num_simulations]
    return torch.randint(rows, (num_simulations,))


class _Draws:
    """L draws of q on one batch: one trace under a vectorized particle plate, or, for a guide
    whose networks do not broadcast over it (a hierarchical guide feeding one site's draw to
    a network), L traces of single draws."""

    def __init__(self, guide: Callable, batch: Batch, layout: PairTraces, num_draws: int):
        self.layout, self.num_draws = layout, num_draws
        run = poutine.trace(with_particles(guide, num_draws, layout.max_plate_nesting))
        try:
            self.traces = [run.get_trace(*batch.args, **batch.kwargs)]
        except PAIR_FAILURES as e:
            if isinstance(e, PairError):
                raise
            self.traces = [poutine.trace(guide).get_trace(*batch.args, **batch.kwargs)
                           for _ in range(num_draws)]

    def local(self, site: str, event_dim: int) -> torch.Tensor:
        """A local site's draws as ``(L, rows, ...)``."""
        if len(self.traces) == 1:
            value = self.traces[0].nodes[site]["value"]
            return rows_first(value, event_dim, self.layout, particles=True)
        return torch.stack([rows_first(t.nodes[site]["value"], event_dim, self.layout,
                                       particles=False) for t in self.traces])

    def global_(self, site: str) -> torch.Tensor:
        """A global site's draws as ``(L, 1, C)``."""
        values = [t.nodes[site]["value"] for t in self.traces]
        return torch.stack(values).reshape(self.num_draws, 1, -1)


def _rank(truth: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Ranks of ``truth`` ``(..., C)`` among ``draws`` ``(L, ..., C)``, ties broken at random."""
    less = (draws < truth).sum(0)
    ties = (draws == truth).sum(0)
    return less + (torch.rand(less.shape, device=less.device) * (ties + 1)).floor().long()


def _local_ranks(model, guide, template: Batch, num_draws: int):
    """Ranks ``(rows, C)`` of the local latents of one simulated batch, and the sites' shapes."""
    layout = run_pair(model, guide, template)
    simulated = simulate(model, template, layout)
    draws_of_q = _Draws(guide, simulated.batch, layout, num_draws)
    columns, shapes = [], {}
    for site, value in simulated.latents.items():
        event = simulated.event_dims[site]
        truth = rows_first(value, event, layout, particles=False)
        draws = draws_of_q.local(site, event).expand(num_draws, *truth.shape)
        shapes[site] = tuple(truth.shape[1:])
        columns.append(_rank(truth, draws).reshape(template.rows, -1))
    return torch.cat(columns, dim=1), shapes


def _refit_ranks(model, guide, dataset: Dataset, num_draws: int, seed: int, refit_steps: int,
                 lr: float):
    """Ranks ``(1, C)`` of the global latents in one simulated data set, q refitted to it."""
    template = dataset.take(torch.arange(dataset.rows))
    layout = run_pair(model, guide, template)
    with seeded(seed):
        simulated = simulate(model, template, layout)
        sites = [s for s in layout.global_latents() if s in simulated.latents]
        if not sites:
            raise PairError(
                "the guide's global sites are all auxiliary (no global latent of the model to "
                "rank); calibration has nothing to rank in this pair"
            )
        saved = param_io.snapshot()
        try:
            with torch.enable_grad():
                fit(poutine.block(model, hide_types=["param"]), guide, _as_data(simulated),
                    num_steps=refit_steps, lr=lr, seed=seed, device=param_io.device())
            draws_of_q = _Draws(guide, simulated.batch, layout, num_draws)
        finally:
            param_io.restore(saved)
    columns, shapes = [], {}
    for site in sites:
        truth = simulated.latents[site].reshape(1, -1)
        draws = draws_of_q.global_(site)
        shapes[site] = tuple(s for s in simulated.latents[site].shape if s != 1) or (1,)
        columns.append(_rank(truth, draws.expand(num_draws, *truth.shape)))
    return torch.cat(columns, dim=1), shapes


def _as_data(simulated: Simulated) -> Dataset:
    batch = simulated.batch
    per_row = {k: batch.kwargs[k] for k in batch.per_row}
    extras = {k: v for k, v in batch.kwargs.items() if k not in batch.per_row}
    return Dataset(batch.args, per_row, extras)
