r"""Which KL terms get a closed form, per site of q, and what a site's KL label says.

The ELBO's KL term of a latent site is either the closed form KL(q‖p) (Kingma & Welling 2014,
appendix B, for Gaussians) or the Monte Carlo term log q(z|x) − log p(z). Pyro's
``TraceMeanField_ELBO`` takes ``torch.distributions.kl_divergence(q, p)`` where one is
registered and *silently* samples the term elsewhere; :func:`kl_sites` finds out per site what
an estimator does, so that ``fit`` can report it, warn, or refuse under ``strict=True``.

A Delta never gets the closed form: Pyro registers KL(Delta‖p) = −log p(v), which drops the
Delta's ``log_density`` (the log-Jacobian of an autoguide's constrained site). Guide sites
without a model counterpart (an autoguide's ``*_unconstrained`` or ``_Auto*_latent``
auxiliary sites) are part of q: their log q enters every estimate.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import pandas as pd
import torch
from pyro.distributions import Delta
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from ..pair.traces import PairTraces, is_guide_factor, is_guide_sample, is_latent
from ..utils.errors import EstimatorError
from .enumeration import model_enumerated

CLOSED_FORM = "closed-form"
SAMPLED = "sampled"


class KLRule(Protocol):
    """What the KL labels and checks read of an estimator: an
    :class:`~ppl_vae.estimators.estimators.Estimator` record is one (this module lies below the
    registry, which uses its closed forms)."""

    name: str
    elbo: type
    closed_form_kl: bool
    requires_reparameterized: bool
    enumerates: bool
    rao_blackwellized: bool
    average_baseline: float | None


class KLFallbackWarning(UserWarning):
    """A closed-form (analytic) estimator falls back to a sampled KL for some latent site."""


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
RAO_BLACKWELLIZED = "sampled (score function, Rao-Blackwellized)"
WITH_BASELINE = "sampled (score function, Rao-Blackwellized, baseline)"
AUXILIARY = "sampled (auxiliary)"
ENUMERATED = "enumerated (exact)"
GUIDE_TERM = "log q term (guide factor or observed)"


def kl_sites(traces: PairTraces, estimator: KLRule) -> pd.DataFrame:
    """Per site of q (and per discrete site the model sums out): q and p's distribution, its
    scope, whether it is enumerated, and how ``estimator`` computes its KL.

    Columns: ``site``, ``q`` (None for a site the model sums out), ``p`` (None for an auxiliary
    guide site), ``scope`` (``local``: in the data plate; ``global``: outside it),
    ``enumerated`` (``"model"``: marked for enumeration and absent from the guide, so summed out
    of the model; ``"guide"``: a guide site marked for enumeration; else ``""``),
    ``closed_form_available`` and ``kl``: ``"enumerated (exact)"`` (summed over the support:
    ``estimator.enumerates``), ``"closed-form"``, ``"sampled"`` (log q − log p, pathwise
    gradient), ``"sampled (score function)"`` (q not reparameterized: Pyro adds the
    score-function term; under a Rao-Blackwellized estimator ``"sampled (score function,
    Rao-Blackwellized)"``, with ``", baseline)"`` where the site has one or the estimator adds
    one), ``"sampled (auxiliary)"`` (a guide-only site: its log q enters) or ``"log q term
    (guide factor or observed)"`` (a ``pyro.factor`` or observed site of the guide:
    ``Trace_ELBO`` subtracts its log-density, so it enters log q with no prior).
    """
    rows = []
    for name, guide_site in traces.guide.nodes.items():
        if is_guide_factor(guide_site):
            rows.append((name, dist_name(guide_site["fn"]), None,
                         "local" if traces.is_local(guide_site) else "global", "no", False,
                         GUIDE_TERM))
            continue
        if not is_guide_sample(guide_site):
            continue
        model_site = traces.model.nodes.get(name)
        auxiliary = model_site is None or not is_latent(model_site)
        available = not auxiliary and closed_form_kl(guide_site, model_site) is not None
        marked = bool(guide_site["infer"].get("enumerate"))
        if auxiliary:
            how = AUXILIARY
        elif marked and estimator.enumerates:
            how = ENUMERATED
        elif available and estimator.closed_form_kl:
            how = CLOSED_FORM
        elif not getattr(guide_site["fn"], "has_rsample", False):
            how = score_function_label(guide_site, estimator)
        else:
            how = SAMPLED
        rows.append((name, dist_name(guide_site["fn"]),
                     None if auxiliary else dist_name(model_site["fn"]),
                     "local" if traces.is_local(guide_site) else "global",
                     "guide" if marked else "no", available, how))
    for name in model_enumerated(traces.model, traces.guide):
        site = traces.model.nodes[name]
        scope = "local" if traces.is_local(site) else "global"
        rows.append((name, None, dist_name(site["fn"]), scope, "model", False, ENUMERATED))
    columns = ["site", "q", "p", "scope", "enumerated", "closed_form_available", "kl"]
    return pd.DataFrame(rows, columns=columns)


def score_function_label(guide_site: dict, estimator: KLRule) -> str:
    """How ``estimator`` takes the gradient of a guide site without ``rsample``."""
    if not estimator.rao_blackwellized:
        return SCORE_FUNCTION
    own = bool(guide_site["infer"].get("baseline"))
    return WITH_BASELINE if own or estimator.average_baseline is not None else RAO_BLACKWELLIZED


def check_enumerates(sites: pd.DataFrame, estimator: KLRule) -> None:
    """Refuse, before any step, a pair whose model sums out a discrete site under an estimator
    that would sample it from its prior (a different objective), and ``enum`` on a pair with
    nothing marked for enumeration."""
    summed = sites.loc[sites["enumerated"] == "model", "site"].tolist()
    if summed and not estimator.enumerates:
        raise EstimatorError(
            f"the model sums out site(s) {summed} (marked for enumeration, absent from the "
            f"guide), which the {estimator.name} estimator ({estimator.elbo.__name__}) would "
            "sample from their prior instead, optimizing another objective; use "
            "estimator='enum' (TraceEnum_ELBO)"
        )
    if estimator.enumerates and (sites["enumerated"] == "no").all():
        raise EstimatorError(
            f"the {estimator.name} estimator sums the sites marked for enumeration, but the pair "
            "marks none; decorate the model or guide with pyro.infer.config_enumerate (or "
            "infer={'enumerate': 'parallel'} on a discrete site), or use estimator='sampled'"
        )


def check_reparameterized(sites: pd.DataFrame, estimator: KLRule) -> None:
    """Refuse an estimator that needs reparameterized sites (``analytic``) when a guide site
    is not, before any step."""
    if not estimator.requires_reparameterized:
        return
    bad = sites.loc[sites["kl"] == SCORE_FUNCTION]
    if bad.empty:
        return
    detail = ", ".join(f"{r.site} (q={r.q})" for r in bad.itertuples())
    raise EstimatorError(
        f"guide site(s) {detail} are not reparameterized, which the {estimator.name} "
        f"estimator ({estimator.elbo.__name__}) requires; for a discrete site use "
        "estimator='enum' (its KL summed exactly; mark the site with config_enumerate), or "
        "estimator='sampled' (Trace_ELBO, a score-function gradient for those sites)"
    )


def check_fallback(sites: pd.DataFrame, estimator: KLRule, strict: bool) -> None:
    """Warn (or raise, when ``strict``) if a closed-form estimator samples some site's KL."""
    if not estimator.closed_form_kl:
        return
    fallen = sites.loc[~sites["closed_form_available"] & ~sites["kl"].isin([AUXILIARY, GUIDE_TERM])]
    if fallen.empty:
        return
    detail = ", ".join(f"{r.site} (q={r.q}, p={r.p})" for r in fallen.itertuples())
    message = (
        f"no closed-form KL is registered for latent site(s) {detail}; the {estimator.name} "
        "estimator samples their KL term as log q - log p"
    )
    if strict:
        raise EstimatorError(
            message + "; register one with torch.distributions.kl.register_kl, or use "
            "estimator='sampled' or strict=False"
        )
    warnings.warn(message, KLFallbackWarning, stacklevel=3)


def dist_name(fn) -> str:
    """A distribution's type with its wrapped bases, e.g. ``Independent(Normal)``."""
    names = []
    while True:
        names.append(type(fn).__name__)
        if not hasattr(fn, "base_dist"):
            break
        fn = fn.base_dist
    return "(".join(names) + ")" * (len(names) - 1)
