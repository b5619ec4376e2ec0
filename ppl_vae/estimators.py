r"""The ELBO estimators and which KL terms get a closed form.

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
- ``"iwae"`` is :class:`IWAE_ELBO`, Pyro's :class:`~pyro.infer.RenyiELBO` at α = 0: the
  importance-weighted bound of Burda, Grosse & Salakhutdinov (2016, eq. 8) with K =
  ``num_particles`` ≥ 2 samples per datapoint,
  :math:`\hat{\mathcal{L}}_K = \log \frac1K \sum_k p(x, z_k)/q(z_k|x) \ge` the ELBO, tighter as K
  grows. It has no separate KL term: the KL is inside the log-mean of the weights.
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

import warnings
from collections.abc import Callable

import pandas as pd
import pyro.infer
import torch
from pyro.distributions import Delta
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .errors import EstimatorError
from .traces import PairTraces, is_latent, run_pair


class STLTrace_ELBO(pyro.infer.Trace_ELBO):
    """``Trace_ELBO`` with the path-derivative ("sticking the landing") gradient.

    For each reparameterized guide site the surrogate of log q(z|x) becomes
    log q(z|x) − log q(z̄|x) + stop_grad(log q(z̄|x)) with z̄ = stop_grad(z): the same value, and
    the gradient ∂ log q/∂z · ∂z/∂φ only (Roeder et al. 2017).
    """

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        for site in guide_trace.nodes.values():
            if not is_latent(site) or not site["fn"].has_rsample:
                continue
            fixed = site["fn"].log_prob(site["value"].detach())
            fixed = scale_and_mask(fixed, site["scale"], site["mask"])
            log_prob, score_function, _ = site["score_parts"]
            site["score_parts"] = ScoreParts(
                log_prob=log_prob,
                score_function=score_function,
                entropy_term=log_prob - fixed + fixed.detach(),
            )
        return model_trace, guide_trace


class IWAE_ELBO(pyro.infer.RenyiELBO):
    """The importance-weighted bound (Burda et al. 2016): ``RenyiELBO(alpha=0)``.

    Per datapoint (sites inside the data plate), L_K(x) = log (1/K) Σ_k p(x, z_k)/q(z_k|x)
    with K = ``num_particles`` reparameterized draws; its gradient is the IWAE gradient, each
    particle's weighted by its normalized importance weight. Latents outside every plate make
    the minibatch one joint importance weight, as Pyro computes it.
    """

    def __init__(
        self,
        num_particles: int = 2,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
    ):
        super().__init__(
            alpha=0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )


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


ESTIMATORS: dict[str, type[pyro.infer.ELBO]] = {
    "sampled": pyro.infer.Trace_ELBO,
    "analytic": AnalyticELBO,
    "stl": STLTrace_ELBO,
    "iwae": IWAE_ELBO,
}

CLOSED_FORM = "closed-form"
SAMPLED = "sampled"


class KLFallbackWarning(UserWarning):
    """The analytic estimator falls back to a sampled KL for some latent site."""


def check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise EstimatorError(f"unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}")
    return estimator


# Compiled variants offered only where benchmarks/ measured them faster (docs/performance.md):
# JitTrace_ELBO beats Trace_ELBO; JitTraceMeanField_ELBO is several times slower than eager.
JIT_ESTIMATORS: dict[str, type[pyro.infer.ELBO]] = {"sampled": pyro.infer.JitTrace_ELBO}


def make_elbo(
    estimator: str, num_particles: int = 1, max_plate_nesting: int = 0, jit: bool = False
) -> pyro.infer.ELBO:
    """The Pyro ELBO object for ``estimator``, particles vectorized.

    ``jit=True`` gives the PyTorch-JIT-compiled variant (``JitTrace_ELBO`` for ``"sampled"``),
    which needs a model whose structure and Python constants do not change between steps.

    Raises:
        EstimatorError: ``"iwae"`` with fewer than 2 particles (with K = 1 the bound is the
            sampled ELBO); ``jit=True`` for an estimator without a faster compiled variant.
    """
    if estimator == "iwae" and num_particles < 2:
        raise EstimatorError(
            f"the iwae estimator needs num_particles=K >= 2 importance samples per datapoint, "
            f"not {num_particles} (with K=1 it is the sampled ELBO); pass num_particles=5, say"
        )
    check_estimator(estimator)
    if jit and estimator not in JIT_ESTIMATORS:
        raise EstimatorError(
            f"jit=True is offered for estimator(s) {sorted(JIT_ESTIMATORS)} only, not "
            f"{estimator!r} (Pyro's compiled mean-field ELBO measured several times slower than "
            "the eager one; see docs/performance.md); drop jit=True"
        )
    return (JIT_ESTIMATORS if jit else ESTIMATORS)[estimator](
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=max_plate_nesting,
        **({"ignore_jit_warnings": True} if jit else {}),
    )


def is_auxiliary(guide_site: dict, model_trace) -> bool:
    """A guide sample site that the model lacks (an autoguide's auxiliary site)."""
    return (
        guide_site["type"] == "sample"
        and not site_is_subsample(guide_site)
        and guide_site["name"] not in model_trace.nodes
    )


def is_point_mass(fn) -> bool:
    """A Delta (possibly reinterpreted by ``Independent``/``to_event``)."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, Delta)


def closed_form_kl(guide_site: dict, model_site: dict) -> torch.Tensor | None:
    """KL(q‖p) for one latent site in closed form, scaled and masked as Pyro does, or None.

    None also where q is a point mass (Pyro's KL(Delta‖p) drops its ``log_density``) or not
    reparameterized (its gradient needs the score function, which the closed form has not).
    """
    fn = guide_site["fn"]
    if is_point_mass(fn) or not getattr(fn, "has_rsample", False):
        return None
    try:
        kl = kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None
    return scale_and_mask(kl, guide_site["scale"], guide_site["mask"])


SCORE_FUNCTION = "sampled (score function)"
AUXILIARY = "sampled (auxiliary)"


def kl_sites(traces: PairTraces, estimator: str) -> pd.DataFrame:
    """Per site of q: q and p's distribution, its scope, and how ``estimator`` computes its KL.

    Columns: ``site``, ``q``, ``p`` (None for an auxiliary guide site), ``scope`` (``local``:
    in the data plate; ``global``: outside it), ``closed_form_available`` and ``kl``:
    ``"closed-form"``, ``"sampled"`` (log q − log p, pathwise gradient), ``"sampled (score
    function)"`` (q not reparameterized: Pyro's Trace_ELBO adds the score-function term) or
    ``"sampled (auxiliary)"`` (a guide-only site: its log q enters the estimate).
    """
    rows = []
    for name, guide_site in traces.guide.nodes.items():
        if guide_site["type"] != "sample" or guide_site["is_observed"]:
            continue
        if site_is_subsample(guide_site):
            continue
        model_site = traces.model.nodes.get(name)
        auxiliary = model_site is None or not is_latent(model_site)
        available = not auxiliary and closed_form_kl(guide_site, model_site) is not None
        if auxiliary:
            how = AUXILIARY
        elif available and estimator == "analytic":
            how = CLOSED_FORM
        elif not getattr(guide_site["fn"], "has_rsample", False):
            how = SCORE_FUNCTION
        else:
            how = SAMPLED
        rows.append(
            {
                "site": name,
                "q": dist_name(guide_site["fn"]),
                "p": None if auxiliary else dist_name(model_site["fn"]),
                "scope": "local" if traces.is_local(guide_site) else "global",
                "closed_form_available": available,
                "kl": how,
            }
        )
    columns = ["site", "q", "p", "scope", "closed_form_available", "kl"]
    return pd.DataFrame(rows, columns=columns)


def check_reparameterized(sites: pd.DataFrame, estimator: str) -> None:
    """Refuse ``analytic`` when a guide site is not reparameterized, before any step."""
    if estimator != "analytic":
        return
    bad = sites.loc[sites["kl"] == SCORE_FUNCTION]
    if bad.empty:
        return
    detail = ", ".join(f"{r.site} (q={r.q})" for r in bad.itertuples())
    raise EstimatorError(
        f"guide site(s) {detail} are not reparameterized, which the analytic estimator "
        "(TraceMeanField_ELBO) requires; use estimator='sampled' (Trace_ELBO with a score-"
        "function gradient for those sites)"
    )


def check_fallback(sites: pd.DataFrame, estimator: str, strict: bool) -> None:
    """Warn (or raise, when ``strict``) if the analytic estimator samples some site's KL."""
    if estimator != "analytic":
        return
    fallen = sites.loc[~sites["closed_form_available"] & (sites["kl"] != AUXILIARY)]
    if fallen.empty:
        return
    detail = ", ".join(f"{r.site} (q={r.q}, p={r.p})" for r in fallen.itertuples())
    message = (
        f"no closed-form KL is registered for latent site(s) {detail}; the analytic estimator "
        "samples their KL term as log q - log p"
    )
    if strict:
        raise EstimatorError(
            message + "; register one with torch.distributions.kl.register_kl, or use "
            "estimator='sampled' or strict=False"
        )
    warnings.warn(message, KLFallbackWarning, stacklevel=3)


def probe_sites(model: Callable, guide: Callable, x: torch.Tensor, estimator: str) -> pd.DataFrame:
    """Run the pair once on ``x`` and report :func:`kl_sites`."""
    return kl_sites(run_pair(model, guide, x), check_estimator(estimator))


def dist_name(fn) -> str:
    """A distribution's type with its wrapped bases, e.g. ``Independent(Normal)``."""
    names = []
    while True:
        names.append(type(fn).__name__)
        if not hasattr(fn, "base_dist"):
            break
        fn = fn.base_dist
    return "(".join(names) + ")" * (len(names) - 1)
