r"""The ELBO estimators: one :class:`Estimator` record each, in one registry.

All estimate the evidence lower bound (Kingma & Welling 2014, eq. 3)

.. math::
    \mathcal{L}(x) = \mathbb{E}_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z))
                   = \log p(x) - \mathrm{KL}(q(z|x)\,\|\,p(z|x)).

- ``"sampled"`` is :class:`pyro.infer.Trace_ELBO`: with :math:`z_s \sim q(z|x)` reparameterized,
  :math:`\hat{\mathcal{L}} = \frac1S\sum_s \log p(x, z_s) - \log q(z_s|x)`; the KL term is
  estimated by Monte Carlo as :math:`\log q(z_s|x) - \log p(z_s)`.
- ``"stl"`` is :class:`STLTrace_ELBO`, the sampled estimate with the "sticking the landing"
  gradient (Roeder, Wu & Duvenaud 2017): the score term ∇_φ log q(z|x) at fixed z, which has
  mean zero, is dropped, leaving the path derivative only; its gradient variance vanishes
  when q(z|x) = p(z|x). The value of the estimate is the sampled one.
- ``"iwae"`` is :class:`~ppl_vae.estimators.iwae.IWAE_ELBO`, Pyro's
  :class:`~pyro.infer.RenyiELBO` at α = 0: the importance-weighted bound of Burda, Grosse &
  Salakhutdinov (2016, eq. 8) with K = ``num_particles`` ≥ 2 samples per datapoint,
  :math:`\hat{\mathcal{L}}_K = \log \frac1K \sum_k p(x, z_k)/q(z_k|x) \ge` the ELBO, tighter as K
  grows. It has no separate KL term: the KL is inside the log-mean of the weights.
- ``"enum"`` is :class:`pyro.infer.TraceEnum_ELBO`: discrete sites marked for enumeration
  (``config_enumerate``, ``infer={"enumerate": "parallel"}``) are summed over their support
  instead of sampled, a site of the model alone marginalized out, a guide site's expectation
  taken exactly; the continuous sites are sampled as under ``"sampled"``
  (:mod:`ppl_vae.estimators.enumeration`). Exact in the discrete part, at the cost of one pass over
  each enumerated site's support (their product, for sites in the same row).
- ``"graph"`` is :class:`pyro.infer.TraceGraph_ELBO`: the sampled value, and for guide sites
  without ``rsample`` the score-function gradient Rao-Blackwellized by the dependency graph
  (each site's learning signal only the cost terms downstream of it; Schulman et al. 2015) minus
  the pair's baselines (``infer={"baseline": ...}``; Mnih & Gregor 2014); ``"graph_avg"``
  (:class:`~ppl_vae.estimators.score_function.BaselineTraceGraph_ELBO`) adds a decaying-average
  baseline where a site has none (:mod:`ppl_vae.estimators.score_function`).
- ``"dreg"`` is :class:`~ppl_vae.estimators.iwae.DReG_ELBO`: the ``"iwae"`` bound's value, the IWAE
  gradient for the model's parameters and the doubly reparameterized one for the guide's,
  Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ (Tucker et al. 2019), whose signal-to-noise ratio does not fall
  as K grows (:mod:`ppl_vae.estimators.iwae`).
- ``"analytic"`` is :class:`AnalyticELBO`, :class:`pyro.infer.TraceMeanField_ELBO` with an
  honest rule for the closed form: the same reconstruction term, and for every latent site
  where ``torch.distributions.kl_divergence(q, p)`` is registered and q is a reparameterized
  distribution with a density (not a point mass) the KL in closed form (Kingma & Welling 2014,
  appendix B, for Gaussians). Elsewhere the site's term is sampled, log q − log p, as Pyro does
  silently where no KL is registered; :func:`kl_sites` says which sites do, so that ``fit`` can
  report it, warn, or refuse under ``strict=True``. Pyro registers KL(Delta‖p) = −log p(v),
  which drops a Delta's ``log_density`` (the Jacobian term of an autoguide's constrained site),
  so a Delta never gets the closed form here.

Guide sites without a counterpart in the model (an autoguide's ``*_unconstrained`` or
``_Auto*_latent`` auxiliary sites) are part of q: their log q enters every estimate, as their
entropy term enters Pyro's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyro.infer
import torch
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample

from ..utils.errors import EstimatorError
from .iwae import IWAE_ELBO, DReG_ELBO, check_disjoint, squared_weight_surrogate, stop_score_terms
from .kl import closed_form_kl, is_auxiliary
from .score_function import BaselineTraceGraph_ELBO

if TYPE_CHECKING:
    from ..pair.traces import PairTraces
    from .terms import ParticleTerms


class STLTrace_ELBO(pyro.infer.Trace_ELBO):
    """``Trace_ELBO`` with the path-derivative ("sticking the landing") gradient.

    For each reparameterized guide site the surrogate of log q(z|x) becomes
    log q(z|x) − log q(z̄|x) + stop_grad(log q(z̄|x)) with z̄ = stop_grad(z): the same value, and
    the gradient ∂ log q/∂z · ∂z/∂φ only (Roeder et al. 2017).
    """

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        stop_score_terms(guide_trace)
        return model_trace, guide_trace


class AnalyticELBO(pyro.infer.TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose closed-form KL follows :func:`closed_form_kl`.

    Per particle: Σ_obs log p(x|z) − Σ_sites KL(q‖p) where :func:`closed_form_kl` gives one,
    else log p(z) − log q(z|x) (its score parts, as Pyro), minus log q of the auxiliary sites.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample" or site_is_subsample(model_site):
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            kl = closed_form_kl(guide_site, model_site)
            if kl is None:
                entropy = guide_site["score_parts"].entropy_term
                elbo = elbo + model_site["log_prob_sum"] - entropy.sum()
            else:
                elbo = elbo - kl.sum()
        for guide_site in guide_trace.nodes.values():
            if is_auxiliary(guide_site, model_trace):
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        return -torch_item(elbo), -elbo


@dataclass(frozen=True)
class Estimator:
    """Everything ppl_vae needs to know about one ELBO estimator; nothing else branches on
    estimator names, so a registered record works in ``fit``, evaluation, the comparison and
    the report alike.

    Attributes:
        name: the registry key (``estimator="..."``, ``--estimator ...``).
        elbo: the Pyro ELBO class trained with.
        summary: one line for help texts and reports.
        closed_form_kl: its KL terms are closed-form where
            :func:`~ppl_vae.estimators.kl.closed_form_kl` gives one (else sampled, log q − log
            p).
        requires_reparameterized: refuses guide sites without ``rsample`` before training.
        jit: the compiled variant, where it measured faster (docs/performance.md), or None.
        importance_weighted: one draw is K particles' bound log (1/K) Σ_k w_k (no KL term);
            it trains with K = ``iwae_particles`` ≥ 2 particles.
        path_derivative: its gradient drops the score term ∇_φ log q(z|x) at fixed z.
        enumerates: sums the sites marked for enumeration (model: marginalized; guide:
            expectation by exact sum) instead of sampling them.
        rao_blackwellized: the score-function term of a site without ``rsample`` takes only
            the cost terms downstream of it, minus the pair's baselines (``TraceGraph_ELBO``).
        average_baseline: β of a decaying-average baseline given to every such site without a
            baseline of its own (its ELBO class takes ``baseline_beta``), or None.
        doubly_reparameterized: the guide's parameters get the gradient of the path-stopped
            log weights weighted by the squared normalized weights (DReG), the model's the
            importance-weighted one; model and guide must not share a parameter.
    """

    name: str
    elbo: type[pyro.infer.ELBO]
    summary: str
    closed_form_kl: bool = False
    requires_reparameterized: bool = False
    jit: type[pyro.infer.ELBO] | None = None
    importance_weighted: bool = False
    path_derivative: bool = False
    enumerates: bool = False
    rao_blackwellized: bool = False
    average_baseline: float | None = None
    doubly_reparameterized: bool = False

    def make(
        self, num_particles: int = 1, max_plate_nesting: int = 0, jit: bool = False
    ) -> pyro.infer.ELBO:
        """The Pyro ELBO object, particles vectorized.

        Raises:
            EstimatorError: an importance-weighted estimator with fewer than 2 particles;
                ``jit=True`` without a compiled variant.
        """
        if self.importance_weighted and num_particles < 2:
            raise EstimatorError(
                f"the {self.name} estimator needs num_particles=K >= 2 importance samples per "
                f"datapoint, not {num_particles} (with K=1 it is the sampled ELBO); pass "
                "num_particles=5, say"
            )
        if jit and self.jit is None:
            offered = sorted(e.name for e in ESTIMATORS.values() if e.jit is not None)
            raise EstimatorError(
                f"jit=True is offered for estimator(s) {offered} only, not {self.name!r} (Pyro's "
                "compiled mean-field ELBO measured several times slower than the eager one; "
                "see docs/performance.md); drop jit=True"
            )
        options = {"ignore_jit_warnings": True} if jit else {}
        if self.average_baseline is not None:
            options["baseline_beta"] = self.average_baseline
        return (self.jit if jit else self.elbo)(
            num_particles=num_particles,
            vectorize_particles=True,
            max_plate_nesting=max_plate_nesting,
            **options,
        )

    def check_pair(self, layout: PairTraces) -> None:
        """Refuse, before any step, a pair this estimator cannot differentiate: for a doubly
        reparameterized one, a parameter both model and guide read."""
        if self.doubly_reparameterized:
            check_disjoint(layout)

    def particles_per_draw(self, iwae_particles: int) -> int:
        """Particles of one draw (and of one training step in a comparison): K or 1."""
        return int(iwae_particles) if self.importance_weighted else 1

    def score(
        self,
        terms: ParticleTerms,
        fixed_log_q: Mapping[str, torch.Tensor] | None = None,
        group: int = 1,
        score_terms: torch.Tensor | None = None,
        for_guide: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per draw and datapoint: (ELBO, KL term) as this estimator computes them, (R, N).

        ``terms`` holds R·``group`` particles, draw r owning particles r·group … r·group +
        group − 1. An importance-weighted estimator averages a draw's weights inside the log
        (its KL term is NaN); the others score the draw's first particle only. With
        ``fixed_log_q`` (log q(z̄|x), z̄ = stop_grad(z), per site) a path-derivative
        estimator's KL term of a reparameterized site is log q(z|x) − log q(z̄|x) +
        stop_grad(log q(z̄|x)) − log p(z): the sampled value, without the score term's gradient.

        Sites sampled without ``rsample`` add ``score_terms`` (per particle and row, zero in
        value: this estimator's score-function surrogate,
        :meth:`~ppl_vae.estimators.score_function.ScoreFunctionDraws.surrogate`); without them,
        Pyro's per-row rule ∇log q(y) · ELBO_n (an enumerating estimator's sampled sites).
        ``for_guide``: a doubly reparameterized estimator's surrogate for the guide's
        parameters, Σ_k sg(w̃_k²) log w̄_k with the path-stopped log weights (value: the bound).
        """
        n = terms.log_likelihood.shape[1]
        stopped = self.path_derivative and fixed_log_q is not None
        if self.importance_weighted:
            log_w = terms.log_weights()
            dreg = for_guide and self.doubly_reparameterized and stopped
            if dreg:
                log_w = log_w + sum((v - v.detach() for v in fixed_log_q.values()),
                                    torch.zeros_like(log_w))
            log_w = log_w.reshape(-1, group, n)
            bound = torch.logsumexp(log_w, dim=1) - math.log(group)
            if dreg:
                surrogate = squared_weight_surrogate(log_w, dim=1)
                bound = bound.detach() + surrogate - surrogate.detach()
            return bound, torch.full_like(bound, math.nan)
        kls = {site: terms.kl(site, self.closed_form_kl) for site in terms.log_q}
        if stopped:
            kls = {s: kl - fixed_log_q[s] + fixed_log_q[s].detach()
                   if s in fixed_log_q and s not in terms.score_function else kl
                   for s, kl in kls.items()}
        kl = sum(kls.values(), torch.zeros_like(terms.log_likelihood))
        elbo = terms.log_likelihood - kl
        if score_terms is not None:
            elbo = elbo + score_terms
        elif terms.score_function:
            # Pyro's surrogate for sites without rsample (Williams 1992; Ranganath et al. 2014):
            # the same value; gradient ∇(ELBO at fixed log q(y)) + ∇log q(y) · ELBO_n per row
            log_q = sum(terms.log_q[s] for s in terms.score_function)
            elbo = elbo + (log_q - log_q.detach()) * (1 + elbo.detach())
        first = slice(None, None, group)  # each draw's first particle
        return elbo[first], kl[first]


ESTIMATORS: dict[str, Estimator] = {}


def register(estimator: Estimator) -> Estimator:
    """Add ``estimator`` to :data:`ESTIMATORS` (by its name), so every entry point takes it."""
    if not isinstance(estimator, Estimator):
        raise EstimatorError(f"register an Estimator record, not a {type(estimator).__name__}")
    ESTIMATORS[estimator.name] = estimator
    return estimator


for _record in (
    Estimator(
        "sampled", pyro.infer.Trace_ELBO, "Trace_ELBO: KL by Monte Carlo, log q - log p",
        jit=pyro.infer.JitTrace_ELBO,
    ),
    Estimator(
        "analytic", AnalyticELBO, "TraceMeanField_ELBO: closed-form KL where registered",
        closed_form_kl=True, requires_reparameterized=True,
    ),
    Estimator(
        "stl", STLTrace_ELBO, "sampled value, path-derivative gradient (Roeder et al. 2017)",
        path_derivative=True,
    ),
    Estimator(  # RenyiELBO's surrogate for a site without rsample is α/(1−α)·log q: 0 at α=0
        "iwae", IWAE_ELBO, "IWAE bound with K particles (Burda et al. 2016)",
        importance_weighted=True, requires_reparameterized=True,
    ),
    Estimator(
        "graph", pyro.infer.TraceGraph_ELBO,
        "TraceGraph_ELBO: score-function terms Rao-Blackwellized, the pair's baselines",
        rao_blackwellized=True,
    ),
    Estimator(
        "graph_avg", BaselineTraceGraph_ELBO,
        "graph with a decaying-average baseline where a site has none (Mnih & Gregor 2014)",
        rao_blackwellized=True, average_baseline=0.9,
    ),
    Estimator(
        "dreg", DReG_ELBO, "IWAE bound, doubly reparameterized encoder gradient (Tucker 2019)",
        importance_weighted=True, requires_reparameterized=True, path_derivative=True,
        doubly_reparameterized=True,
    ),
    Estimator(
        "enum", pyro.infer.TraceEnum_ELBO,
        "TraceEnum_ELBO: enumerated discrete sites summed exactly, the rest sampled",
        enumerates=True,
    ),
):
    register(_record)


def get(estimator: str | Estimator) -> Estimator:
    """The record of ``estimator`` (a name or a record), or a clear error."""
    if isinstance(estimator, Estimator):
        return estimator
    if estimator not in ESTIMATORS:
        raise EstimatorError(f"unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[estimator]
