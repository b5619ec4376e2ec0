r"""Variance of the ELBO estimators at fixed parameters: of the estimate and of its gradient.

At fixed parameters and a fixed minibatch :math:`x_{1..N}`, draw :math:`R` independent
reparameterized particles :math:`z^{(r)}_n = g_\phi(\epsilon^{(r)}_n, x_n)` and score each one
under every estimator *with the same draw* (a paired comparison):

- ``"sampled"`` (``Trace_ELBO``): :math:`\hat{\mathcal L}^{(r)} = \frac1N\sum_n
  \log p(x_n|z^{(r)}_n) - [\log q(z^{(r)}_n|x_n) - \log p(z^{(r)}_n)]`;
- ``"stl"`` (sticking the landing, Roeder et al. 2017): the sampled value; its gradient drops
  the score term ∇_φ log q(z|x) at fixed z (see :meth:`ppl_vae.estimators.Estimator.score`);
- ``"analytic"`` (``TraceMeanField_ELBO``): the same with the KL term replaced by
  :math:`\mathrm{KL}(q(z|x_n)\,\|\,p(z))` in closed form where one is registered, so that term
  has zero variance given :math:`x`.
- ``"iwae"`` (``RenyiELBO(alpha=0)``, Burda et al. 2016): one draw is K = ``iwae_particles``
  particles, :math:`\hat{\mathcal L}^{(r)}_K = \frac1N\sum_n \log \frac1K \sum_k
  p(x_n, z^{(r,k)}_n) / q(z^{(r,k)}_n|x_n)`; its first particle is the one the single-particle
  estimators score, so the comparison stays paired. It has no KL term (reported as NaN).
- ``"dreg"`` (Tucker et al. 2019): the ``"iwae"`` value; the gradient of the guide's
  parameters comes from a second loss per draw, the path-stopped log weights weighted by the
  squared normalized weights (:mod:`ppl_vae.estimators.iwae`).
- ``"graph"``, ``"graph_avg"`` (``TraceGraph_ELBO``): the sampled value. Guide sites without
  ``rsample`` get, under every estimator that does not enumerate, the score-function
  surrogate Pyro's ELBO would build (Trace_ELBO's learning signal, or the downstream costs and
  baselines of the dependency graph), from one more run of the pair on the same draws
  (:mod:`ppl_vae.estimators.score_function`).

:func:`estimate_draws` returns the per-draw ELBO and KL term (per datapoint). Their standard
deviation over draws is the estimator's noise at these parameters.

:func:`gradient_variance` returns, per parameter group, for the gradient :math:`g^{(r)}` of the
minibatch loss :math:`-\sum_n \hat{\mathcal L}_n^{(r)}` (what SVI steps on) with respect to the
unconstrained parameters, the total variance :math:`\operatorname{tr}\operatorname{Cov}(g)` and
the signal-to-noise ratio of Rainforth et al. (2018, "Tighter variational bounds are not
necessarily better"), who define it per coordinate as :math:`|\mathbb E\, g_i| / \sigma(g_i)`;
for a group of parameters we use its vector form

.. math:: \mathrm{SNR} = \frac{\|\mathbb E\, g\|}{\sqrt{\operatorname{tr}\operatorname{Cov}(g)}}.

Groups default to *encoder* (φ: parameters the guide reads) and *decoder* (θ: parameters only
the model reads). Per-draw gradients are a Jacobian of R losses, so they need R backward
passes in general; draws are taken ``chunk`` at a time in one vectorized forward pass whose
losses are differentiated together (``torch.autograd.grad(..., is_grads_batched=True)``, a
vmap over the backward). A chunk of m draws costs about m single backward passes over an
m-particle graph, so the total work is O(R·m): small chunks amortize Python and dispatch
overhead without the O(R²) cost of differentiating all R draws in one pass. The default chunk
(:func:`default_chunk`) shrinks as the model grows, because the batched backward pass also
materializes m gradients of every weight matrix; measured by ``benchmarks/vectorized.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from pyro import poutine

from ..estimators.estimators import get
from ..estimators.kl import check_enumerates, check_reparameterized, kl_sites
from ..estimators.particles import particle_terms
from ..estimators.score_function import ScoreFunctionDraws
from ..estimators.terms import ParticleTerms
from ..pair.dataset import Batch, as_dataset
from ..pair.traces import (
    PairTraces,
    global_terms,
    is_latent,
    local_terms,
    run_pair,
    with_particles,
)
from ..utils import params as param_io
from ..utils.errors import EstimatorError, is_integer
from ..utils.rng import seeded

ENCODER = "encoder"
DECODER = "decoder"
GRADIENT_COLUMNS = ["estimator", "param_group", "variance", "snr", "mean_norm", "num_params"]


def default_chunk(num_params: int) -> int:
    """Draws per vectorized pass: 5 up to 40,000 parameters, down to 1 from 100,000, where
    ``benchmarks/vectorized.py`` measured the larger chunk slower than a naive loop
    (docs/performance.md)."""
    return max(1, min(5, 200_000 // max(1, num_params)))


def particles_per_draw(layout: PairTraces, estimators: Sequence[str], iwae_particles: int) -> int:
    """K = ``iwae_particles`` when an importance-weighted estimator is measured, else 1, after
    checking that the per-datapoint bound applies: K ≥ 2 and every latent site inside the data
    plate."""
    weighted = [e for e in estimators if get(e).importance_weighted]
    if not weighted:
        return 1
    if not is_integer(iwae_particles) or iwae_particles < 2:
        raise EstimatorError(f"iwae_particles must be an integer >= 2, not {iwae_particles!r}")
    outside = [
        name
        for name, site in layout.model.nodes.items()
        if is_latent(site) and not layout.is_local(site)
    ]
    if outside:
        raise EstimatorError(
            f"latent site(s) {outside} lie outside the data plate, so the {weighted[0]} bound is "
            "one joint weight for the whole minibatch, not a per-datapoint one; measure the other "
            "estimators on this pair"
        )
    return int(iwae_particles)


def minibatch(x, model_kwargs=None) -> Batch:
    """All rows of ``x`` (an array, or a tuple or dict of per-row arrays) as one batch."""
    if isinstance(x, Batch):
        return x
    dataset = as_dataset(x, model_kwargs)
    dataset.validate()
    return dataset.head(dataset.rows)


def fixed_log_q(
    guide: Callable, x: Batch, terms: ParticleTerms, layout: PairTraces
) -> dict[str, torch.Tensor]:
    """log q(z̄|x) per site of q and particle, with z̄ the detached draws of ``terms``: the
    guide is run once more, conditioned on them, so only its parameters carry gradients.
    Global sites are shared out evenly over the rows, as in :meth:`ParticleTerms.spread`."""
    num_particles, n = terms.log_likelihood.shape
    draws = {site: value.detach() for site, value in terms.values.items()}
    guide = with_particles(guide, num_particles, layout.max_plate_nesting)
    trace = poutine.trace(poutine.condition(guide, data=draws)).get_trace(*x.args, **x.kwargs)
    trace.compute_log_prob()

    def rows(site: dict) -> torch.Tensor:
        if layout.is_local(site):
            return local_terms(site["log_prob"], layout, num_particles, n)
        shared = global_terms(site["log_prob"], layout, num_particles) / n
        return shared.unsqueeze(1).expand(num_particles, n)

    return {s: rows(trace.nodes[s]) for s in draws}


def param_groups(layout: PairTraces) -> dict[str, list[str]]:
    """``encoder``: parameters the guide reads; ``decoder``: those only the model reads."""
    guide = [n for n, s in layout.guide.nodes.items() if s["type"] == "param"]
    model = [n for n, s in layout.model.nodes.items() if s["type"] == "param" and n not in guide]
    return {name: names for name, names in ((ENCODER, guide), (DECODER, model)) if names}


def estimate_draws(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    estimators: Sequence[str],
    num_draws: int,
    *,
    iwae_particles: int = 5,
    seed: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """``num_draws`` ELBO estimates on minibatch ``x`` at the current parameters.

    Returns a long frame: ``estimator``, ``draw``, ``elbo`` and ``kl`` (the minibatch mean per
    datapoint of one draw's estimate; one draw of ``"iwae"`` is ``iwae_particles`` particles).
    All estimators score the same draws (those that sum the guide's enumerated sites share
    their own: a summed site has no draw to share).
    """
    x = minibatch(x, model_kwargs)
    with torch.no_grad(), seeded(seed):
        layout = run_pair(model, guide, x)
        group = particles_per_draw(layout, estimators, iwae_particles)
    check_estimators(layout, estimators)
    with torch.no_grad(), seeded(seed):
        terms = {
            sums: particle_terms(model, guide, x, num_draws * group, layout, sums).spread()
            for sums in dict.fromkeys(get(e).enumerates for e in estimators)
        }
        frames = []
        for estimator in estimators:
            record = get(estimator)
            elbo, kl = record.score(terms[record.enumerates], group=group)
            frames.append(
                pd.DataFrame(
                    {
                        "estimator": estimator,
                        "draw": range(num_draws),
                        "elbo": elbo.mean(1).double().cpu().numpy(),
                        "kl": kl.mean(1).double().cpu().numpy(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def gradient_draws(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    estimators: Sequence[str],
    num_draws: int,
    *,
    chunk: int | None = None,
    iwae_particles: int = 5,
    seed: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per estimator and parameter name, ``num_draws`` gradients of the minibatch loss.

    Each entry has shape ``(num_draws, *param.shape)`` and is taken with respect to the
    unconstrained parameter. All estimators are differentiated on the same draws (those that
    sum the guide's enumerated sites on their own).

    Guide sites without ``rsample`` (sampled discrete sites) add the score-function term of
    Pyro's ``Trace_ELBO`` per row (:meth:`~ppl_vae.estimators.Estimator.score`); sites an
    estimator sums (``"enum"``) contribute their exact gradient.

    Raises:
        EstimatorError: an estimator the pair's sites rule out (:func:`check_estimators`).
    """
    x = minibatch(x, model_kwargs)
    with seeded(seed):
        layout = run_pair(model, guide, x)
    check_estimators(layout, estimators)
    group = particles_per_draw(layout, estimators, iwae_particles)
    with seeded(seed):
        names = [n for n, s in layout.guide.nodes.items() if s["type"] == "param"]
        names += [n for n, s in layout.model.nodes.items() if s["type"] == "param"]
        names = list(dict.fromkeys(names))
        params = param_io.unconstrained(names)
        if chunk is None:
            chunk = default_chunk(sum(p.numel() for p in params))
        guide_params = set(param_groups(layout).get(ENCODER, ()))
        per_estimator: dict[str, list[list[torch.Tensor]]] = {e: [] for e in estimators}
        for start in range(0, num_draws, chunk):
            m = min(chunk, num_draws - start)
            rows = _losses(model, guide, x, m * group, layout, estimators, group)
            losses = torch.cat([loss for *_, loss in rows])
            grads = torch.autograd.grad(
                losses,
                params,
                grad_outputs=torch.eye(len(losses), device=losses.device),
                is_grads_batched=True,
                allow_unused=True,
                materialize_grads=True,
            )
            parts = {key[:2]: [g[i * m : (i + 1) * m].detach() for g in grads]
                     for i, key in enumerate(rows)}
            for estimator in estimators:
                own, for_guide = parts[estimator, False], parts.get((estimator, True))
                per_estimator[estimator].append([
                    for_guide[j] if for_guide is not None and name in guide_params else own[j]
                    for j, name in enumerate(names)
                ])
    return {
        e: {n: torch.cat([c[j] for c in chunks]) for j, n in enumerate(names)}
        for e, chunks in per_estimator.items()
    }


def gradient_variance(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    estimators: Sequence[str] = ("sampled", "analytic"),
    num_draws: int = 100,
    *,
    groups: dict[str, list[str]] | None = None,
    chunk: int | None = None,
    iwae_particles: int = 5,
    seed: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Total gradient variance and SNR per estimator and parameter group (see module doc).

    Args:
        groups: group name → parameter names; default encoder (φ) and decoder (θ).
        num_draws: R ≥ 2 gradient draws on ``x`` at the current parameters.
        x: the minibatch: an array, or a tuple or dict of per-row arrays (as ``fit``'s data).
        iwae_particles: K, the particles of one ``"iwae"`` draw.
        model_kwargs: constant keyword arguments passed to model and guide.
        chunk: draws per vectorized pass; default :func:`default_chunk` of the parameter count.

    Returns:
        one row per estimator and group: ``variance`` (tr Cov g, unbiased over draws),
        ``snr`` (‖mean g‖ / sqrt(variance)), ``mean_norm`` (‖mean g‖), ``num_params``.
    """
    if not is_integer(num_draws) or num_draws < 2:
        raise EstimatorError(f"num_draws must be at least 2 for a variance, not {num_draws}")
    draws = gradient_draws(
        model,
        guide,
        x,
        estimators,
        num_draws,
        chunk=chunk,
        iwae_particles=iwae_particles,
        seed=seed,
        model_kwargs=model_kwargs,
    )
    if groups is None:
        with torch.no_grad(), seeded(seed):
            groups = param_groups(run_pair(model, guide, minibatch(x, model_kwargs)))
    rows = []
    for estimator, grads in draws.items():
        for group, names in groups.items():
            g = torch.cat([grads[n].reshape(num_draws, -1) for n in names], dim=1).double()
            variance = float(g.var(dim=0).sum())
            mean_norm = float(g.mean(dim=0).norm())
            snr = mean_norm / math.sqrt(variance) if variance > 0 else math.inf
            rows.append((estimator, group, variance, snr, mean_norm, g.shape[1]))
    return pd.DataFrame(rows, columns=GRADIENT_COLUMNS)


def _losses(model, guide, x: Batch, num_particles: int, layout: PairTraces,
            estimators: Sequence[str], group: int) -> list[tuple[str, bool, torch.Tensor]]:
    """``(estimator, for_guide, losses)``: per estimator the minibatch loss of each draw
    (differentiable), and for a doubly reparameterized one a second loss whose gradient is its
    guide parameters'. Estimators that sum the enumerated sites share one set of particles, the
    others another; sites without ``rsample`` get each estimator's score-function surrogate
    from one more run of the pair on those draws (:mod:`ppl_vae.estimators.score_function`)."""
    records = [get(e) for e in estimators]
    rows = []
    for sums in dict.fromkeys(r.enumerates for r in records):
        mine = [r for r in records if r.enumerates == sums]
        terms = particle_terms(model, guide, x, num_particles, layout, sums).spread()
        path = any(r.path_derivative for r in mine)
        fixed = fixed_log_q(guide, x, terms, layout) if path else None
        draws = None
        if terms.score_function and not sums:
            graph = any(r.rao_blackwellized for r in mine)
            draws = ScoreFunctionDraws(model, guide, x, terms, layout, provenance=graph)
        for r in mine:
            extra = None if draws is None else draws.surrogate(r.rao_blackwellized,
                                                               r.average_baseline)
            rows.append((r.name, False, -r.score(terms, fixed, group, extra)[0].sum(1)))
            if r.doubly_reparameterized:
                rows.append((r.name, True, -r.score(terms, fixed, group, for_guide=True)[0].sum(1)))
    return rows


def check_estimators(layout: PairTraces, estimators: Sequence[str]) -> None:
    """Refuse, as ``fit`` would, an estimator the pair's sites rule out: a sampled estimator
    where the model sums a site out, ``analytic`` or ``iwae`` on a discrete guide site, ..."""
    for estimator in estimators:
        record = get(estimator)
        sites = kl_sites(layout, record)
        check_enumerates(sites, record)
        check_reparameterized(sites, record)
        record.check_pair(layout)
