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
- ``"analytic"`` is :class:`pyro.infer.TraceMeanField_ELBO`: the same reconstruction term, and
  for every latent site where ``torch.distributions.kl_divergence(q, p)`` is registered the KL
  in closed form (Kingma & Welling 2014, appendix B, for Gaussians). Where none is registered
  Pyro *silently* falls back to the sampled term for that site; :func:`kl_sites` finds out which
  sites do, so that ``fit`` can report it, warn, or refuse under ``strict=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pandas as pd
import pyro.infer
import torch
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
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


ESTIMATORS: dict[str, type[pyro.infer.ELBO]] = {
    "sampled": pyro.infer.Trace_ELBO,
    "analytic": pyro.infer.TraceMeanField_ELBO,
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


def closed_form_kl(guide_site: dict, model_site: dict) -> torch.Tensor | None:
    """KL(q‖p) for one latent site in closed form, scaled and masked as Pyro does, or None."""
    try:
        kl = kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None
    return scale_and_mask(kl, guide_site["scale"], guide_site["mask"])


def kl_sites(traces: PairTraces, estimator: str) -> pd.DataFrame:
    """Per latent site: q and p's distribution, and how ``estimator`` computes the KL.

    Columns: ``site``, ``q``, ``p``, ``closed_form_available`` and ``kl`` (``"closed-form"`` or
    ``"sampled"``).
    """
    rows = []
    for name, model_site in traces.model.nodes.items():
        if not is_latent(model_site):
            continue
        guide_site = traces.guide.nodes[name]
        available = closed_form_kl(guide_site, model_site) is not None
        rows.append(
            {
                "site": name,
                "q": dist_name(guide_site["fn"]),
                "p": dist_name(model_site["fn"]),
                "closed_form_available": available,
                "kl": CLOSED_FORM if available and estimator == "analytic" else SAMPLED,
            }
        )
    return pd.DataFrame(rows, columns=["site", "q", "p", "closed_form_available", "kl"])


def check_fallback(sites: pd.DataFrame, estimator: str, strict: bool) -> None:
    """Warn (or raise, when ``strict``) if the analytic estimator samples some site's KL."""
    if estimator != "analytic":
        return
    fallen = sites.loc[~sites["closed_form_available"]]
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
