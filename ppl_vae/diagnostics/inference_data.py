r"""A Pyro guide's posterior as ArviZ ``InferenceData`` (a ``DataTree`` under arviz ≥ 1.0).

ArviZ's ``from_pyro`` converts MCMC runs only. Here the guide is the sampler: for the selected
datapoints :math:`x_n`, draws :math:`z_{n,s} \sim q(z|x_n)`, :math:`s = 1..S`, are scored
under the model, and the groups are

- ``posterior``: every latent site's draws and every ``pyro.deterministic`` site's values
  (as ArviZ's ``from_pyro``/``from_numpyro`` put them), dims ``(chain, draw, ...)``; the
  axis of a site that runs over the data plate is named ``obs`` (coordinates: the row
  numbers; ``obs_row`` when a site itself is named ``obs``, as in Pyro's examples; each
  group's ``attrs["row_dim"]`` says which),
  the others ``{site}_dim_{i}``; global latents keep their own shapes, drawn once per draw;
- for a discrete site ``y`` the model sums out (marked for enumeration, absent from the guide):
  ``posterior["y_probs"]``, p(y_n = c | x_n, z_{n,s}) per draw, dims ``(chain, draw, obs,
  y_support)`` (its mean over draws is the guide's estimate of p(y_n = c | x_n)), for such
  sites in no plate but the data plate; a guide site marked for enumeration is drawn;
- ``posterior_predictive``: replicated observations :math:`\tilde x \sim p(x|z_{n,s})`;
- ``log_likelihood``: :math:`\log p(x_n|z_{n,s})` per observed site, dims ``(chain, draw, obs)``
  (one value per row, a ``to_event`` site's elements summed; a ``pyro.factor`` is no data:
  it is in none of the data groups, only in ``log_weight``), the conditional density at
  draws of q: ``az.loo`` on it is PSIS-LOO only for global latents drawn from the posterior;
  the group's ``attrs["meaning"]`` says so and, with local latents, a
  :class:`LogLikelihoodWarning` points to :func:`~ppl_vae.elpd` (docs/diagnostics.md,
  "Comparing models");
- ``sample_stats``: ``log_weight`` :math:`= \log p(x_n, z_{n,s}) - \log q(z_{n,s}|x_n)`, and
  with global latents θ ``global_log_weight`` :math:`= \log p(\theta_s) - \log q(\theta_s)`
  (dims ``(chain, draw)``; with the rows' log weights it makes the joint weight that
  :func:`~ppl_vae.plot_loo_pit` corrects q with);
- ``observed_data``, and attributes (seed, estimator, steps, package versions).

Draws of the guide are not a Markov chain: within a chain they are independent. Independent
fits (seeds) become separate chains, so that R-hat measures how much restarts disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyro
import torch
from pyro import poutine

from .. import arviz_compat
from ..estimators.enumeration import model_enumerated
from ..estimators.particles import ParticleSampler
from ..pair.dataset import Batch, select_rows
from ..pair.traces import (
    PAIR_FAILURES,
    PairTraces,
    is_deterministic,
    is_latent,
    is_observed,
    run_pair,
    with_particles,
)
from ..training.training import FitResult
from ..utils import params as param_io
from ..utils.errors import PplVaeError, check_positive
from ..utils.params import restore, snapshot
from ..utils.rng import seeded
from ..utils.runs import versions

OBS_DIM = "obs"
CONDITIONAL = (
    "log p(x_n | latents) at draws of the guide q, one value per row and observed site (the "
    "elements of a to_event site summed). az.loo/az.waic/az.compare read it as draws from "
    "the posterior: PSIS-LOO for global latents up to q's error; with local latents, whose "
    "draws were fitted to x_n itself, a harmonic-mean estimate of log p(x_n), not the "
    "predictive density: use ppl_vae.elpd. az.plot_loo_pit needs one value per element: "
    "use ppl_vae.plot_loo_pit."
)


class LogLikelihoodWarning(UserWarning):
    """The export's ``log_likelihood`` group is log p(x_n | z_n) of local latents fitted to
    x_n: ``az.loo`` and ``az.compare`` on it do not estimate the predictive density."""


def to_inference_data(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 500,
    *,
    seed: int = 0,
    obs: Sequence[int] | None = None,
    fits: FitResult | Sequence[FitResult] | None = None,
    attrs: Mapping[str, object] | None = None,
    particle_batch: int = 100,
    model_kwargs: Mapping[str, object] | None = None,
) -> arviz_compat.InferenceData:
    """Draw ``num_samples`` latents per datapoint from the guide and export them to ArviZ.

    Args:
        model, guide: the Pyro pair; parameters are read from Pyro's param store.
        data: tensor, numpy array or DataFrame; rows are datapoints.
        num_samples: draws per chain (vectorized, ``particle_batch`` at a time).
        seed: seeds the draws; chain ``c`` uses ``seed + c``.
        obs: row numbers to export (default all rows). The posterior of a per-datapoint
            latent holds ``chains · num_samples · len(obs) · dim(z)`` numbers.
        fits: :class:`~ppl_vae.FitResult` objects of independent fits of this pair; each
            becomes one chain (its parameters are loaded for it, and the param store is put
            back afterwards). Default: one chain from the parameters in the store.
        attrs: extra attributes, e.g. ``{"estimator": "analytic", "steps": 2000}``.
        model_kwargs: constant keyword arguments passed to model and guide.

    Returns:
        ``arviz.InferenceData`` (an xarray ``DataTree`` under arviz ≥ 1.0) with the groups
        listed in the module docstring.
    """
    check_positive(num_samples=num_samples, particle_batch=particle_batch)
    fits = [fits] if isinstance(fits, FitResult) else list(fits or [])
    if not all(isinstance(f, FitResult) for f in fits):
        raise PplVaeError("fits must be FitResult objects (what ppl_vae.fit returns) or a list "
                          "of them")
    x, index = select_rows(data, obs, param_io.device(), model_kwargs)
    if fits:
        saved = snapshot()
        try:
            chains = []
            for c, fit in enumerate(fits):
                restore(fit.params)
                chains.append(_chain(model, guide, x, num_samples, seed + c, particle_batch))
        finally:
            restore(saved)
    else:
        chains = [_chain(model, guide, x, num_samples, seed, particle_batch)]
    layout = chains[0][1]
    groups = {
        group: {name: np.stack([c[0][group][name] for c in chains]) for name in chains[0][0][group]}
        for group in ("posterior", "posterior_predictive", "log_likelihood", "sample_stats")
    }
    groups["observed_data"] = {
        name: site["value"].detach().cpu().numpy()
        for name, site in layout.model.nodes.items()
        if is_observed(site)
    }
    row = row_dim(layout)
    named = {
        name: site_dims(name, site, layout, row)
        for name, site in layout.model.nodes.items()
        if is_latent(site) or is_observed(site) or is_deterministic(site)
    }
    for name in model_enumerated(layout.model, layout.guide):
        named[f"{name}_probs"] = [row, f"{name}_support"]
    dims = {
        group: {name: named[name] for name in groups[group]}
        for group in ("posterior", "posterior_predictive", "observed_data")
    }
    dims["log_likelihood"] = {name: [row] for name in groups["log_likelihood"]}
    dims["sample_stats"] = {"log_weight": [row], "global_log_weight": []}
    if any(is_latent(s) and layout.is_local(s) for s in layout.model.nodes.values()):
        warnings.warn(
            "the log_likelihood group holds log p(x_n | z_n) at draws of q(z_n | x_n): az.loo, "
            "az.waic and az.compare on it do not estimate the predictive density of x_n; use "
            "ppl_vae.elpd(model, guide, data, held_out=...) and ppl_vae.plot_loo_pit(idata)",
            LogLikelihoodWarning,
            stacklevel=2,
        )
    attrs = _attrs(seed, num_samples, fits, attrs) | {"row_dim": row}
    return arviz_compat.from_dict(groups, dims, {row: index.tolist()}, attrs,
                                  {"log_likelihood": {"meaning": CONDITIONAL}})


def row_dim(layout: PairTraces) -> str:
    """The name of the rows' dim: ``obs``, or ``obs_row`` when a site is named ``obs``."""
    names = set(layout.model.nodes) | set(layout.guide.nodes)
    return OBS_DIM if OBS_DIM not in names else f"{OBS_DIM}_row"


def site_dims(name: str, site: dict, layout: PairTraces, row: str = OBS_DIM) -> list[str]:
    """Dim names of a site's value: ``row`` for the data plate's axis, else ``{name}_dim_{i}``."""
    shape = site["value"].shape
    batch_ndim = len(shape) - site["fn"].event_dim
    data_dim = layout.data_dim
    inside = layout.is_local(site)
    data_axis = batch_ndim + data_dim if inside and batch_ndim >= -data_dim else None
    if inside and is_deterministic(site):  # event_dim defaults to all of the value's dims
        rows = next(f.size for f in site["cond_indep_stack"] if f.name == layout.data_plate)
        data_axis = next((a for a, n in enumerate(shape) if n == rows), None)
    others = iter(range(len(shape)))
    return [row if a == data_axis else f"{name}_dim_{next(others)}" for a in range(len(shape))]


def _chain(
    model: Callable,
    guide: Callable,
    x: Batch,
    num_samples: int,
    seed: int,
    particle_batch: int,
) -> tuple[dict[str, dict[str, np.ndarray]], PairTraces]:
    """One chain: ``{group: {name: array (draw, ...)}}`` and the pair's layout on ``x``."""
    parts: dict[str, dict[str, list[torch.Tensor]]] = {
        g: {} for g in ("posterior", "posterior_predictive", "log_likelihood", "sample_stats")
    }

    def add(group: str, name: str, value: torch.Tensor) -> None:
        parts[group].setdefault(name, []).append(value.detach().cpu())

    with torch.no_grad(), seeded(seed):
        layout = run_pair(model, guide, x)
        for start in range(0, num_samples, particle_batch):
            k = min(particle_batch, num_samples - start)
            # the guide's marked discrete sites are sampled (draws of q); those the model sums
            # out are summed, with their conditional posterior per draw
            terms = ParticleSampler(model, guide, layout, k, guide_sums=False,
                                    posteriors=True).terms(x)
            latents = {
                name: value.reshape(k, *layout.model.nodes[name]["value"].shape)
                for name, value in terms.values.items()
                if name in layout.model.nodes and is_latent(layout.model.nodes[name])
            }
            for name, value in latents.items():
                add("posterior", name, value)
            for name, value in terms.deterministic.items():
                add("posterior", name, value.reshape(k, *layout.model.nodes[name]["value"].shape))
            replicated = _replicate(model, x, k, layout, latents)
            for name, value in replicated.items():
                add("posterior_predictive", name, value)
            for name, probs in terms.discrete_posteriors.items():
                add("posterior", f"{name}_probs", probs)
            for name, value in terms.observed.items():
                add("log_likelihood", name, value)
            add("sample_stats", "log_weight", terms.log_weights())
            if terms.globals.log_q:
                add("sample_stats", "global_log_weight", terms.globals.log_weight())
    arrays = {
        g: {name: torch.cat(v).numpy() for name, v in group.items()} for g, group in parts.items()
    }
    return arrays, layout


def _replicate(
    model: Callable, x: Batch, k: int, layout: PairTraces, latents: dict
) -> dict[str, torch.Tensor]:
    """Observed sites drawn from the model given the latent draws ``(k, *site)``, shape
    ``(k, *x_site)``: vectorized, or one draw at a time where the model does not broadcast."""
    observed = {n: s for n, s in layout.model.nodes.items() if is_observed(s)}

    def draw(fn, values) -> dict:
        trace = poutine.trace(poutine.condition(poutine.uncondition(fn), data=values))
        return x(trace.get_trace).nodes

    try:
        nodes = draw(with_particles(model, k, layout.max_plate_nesting), latents)
        return {n: nodes[n]["value"].reshape(k, *s["value"].shape) for n, s in observed.items()}
    except PAIR_FAILURES:
        draws = [draw(model, {n: v[i] for n, v in latents.items()}) for i in range(k)]
        return {n: torch.stack([d[n]["value"] for d in draws]) for n in observed}


def _attrs(seed: int, num_samples: int, fits: list[FitResult], extra) -> dict[str, object]:
    attrs: dict[str, object] = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "inference": "variational (draws from the guide q(z|x))",
        "seed": seed,
        "num_samples": num_samples,
    }
    if fits:
        attrs |= {
            "estimator": ",".join(sorted({f.estimator for f in fits})),
            "steps": [f.num_steps for f in fits],
            "fit_seeds": [f.seed for f in fits],
        }
    attrs |= {f"{k.replace('-', '_')}_version": v for k, v in versions().items()}
    attrs |= dict(extra or {})
    return attrs
