r"""Per-datapoint ELBO terms and the importance-sampled log-likelihood.

For each datapoint :math:`x_n` and particles :math:`z_{n,k} \sim q(z|x_n)`, :math:`k=1..K`:

- reconstruction :math:`\frac1K\sum_k \log p(x_n|z_{n,k})`, an unbiased estimate of
  :math:`\mathbb{E}_q[\log p(x_n|z)]`;
- KL per latent site: closed-form :math:`\mathrm{KL}(q\|p)` where one is registered (averaged
  over particles of *earlier* sites it may depend on), otherwise
  :math:`\frac1K\sum_k \log q(z_{n,k}|x_n) - \log p(z_{n,k})`;
- ELBO = reconstruction − KL, exactly, per datapoint.

The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016, eq. 8)

.. math:: \log p(x_n) \ge \mathcal{L}_K(x_n)
          = \log \frac1K \sum_k \frac{p(x_n, z_{n,k})}{q(z_{n,k}|x_n)}

tightens to :math:`\log p(x_n)` as :math:`K\to\infty`. All particles are vectorized (or looped
where the pair does not broadcast; see :mod:`ppl_vae.estimators.particles`).

Global latents θ (guide sites outside the data plate) are drawn once per particle for the whole
data set. The per-row numbers are then *given the globals*: row n's terms at the particle's
θ_k, averaged over q(θ). The data set's joint numbers carry the global part and are in
``attrs["joint"]``: the joint ELBO :math:`\sum_n \mathrm{ELBO}_n + \mathbb{E}_q[\log p(\theta)
- \log q(\theta)]` and the joint IWAE bound of :math:`\log p(X)`,
:math:`\log \frac1K \sum_k w_k` with :math:`w_k` the whole data set's weight. Without global
latents the rows are independent and the joint IWAE bound is the sum of the per-row bounds.
See docs/pairs.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from ..estimators.enumeration import guide_enumerated, model_enumerated
from ..estimators.estimators import get
from ..estimators.kl import CLOSED_FORM, ENUMERATED, GUIDE_TERM, SAMPLED
from ..estimators.particles import dataset_terms
from ..estimators.terms import ParticleTerms
from ..pair.dataset import Dataset, as_dataset
from ..pair.densities import check_log_densities
from ..pair.traces import PairTraces, is_factor, is_guide_factor, is_guide_sample, run_pair
from ..utils import params
from ..utils.errors import check_positive
from ..utils.rng import seeded

PER_ROW_LOCAL = "per datapoint (no global latents: the rows sum to the joint numbers)"
PER_ROW_GIVEN_GLOBALS = (
    "per datapoint given the global latents (drawn from q per particle); the joint numbers "
    "in attrs['joint'] add their KL"
)


@dataclass(frozen=True)
class Prepared:
    """Data set, layout and global sites of one evaluation call."""

    dataset: Dataset
    layout: PairTraces
    global_sites: list[str]
    device: torch.device


def prepare(
    model: Callable, guide: Callable, data, batch_size: int, model_kwargs=None
) -> Prepared:
    """Check the data, probe the pair on its first batch (under no_grad)."""
    dataset = as_dataset(data, model_kwargs)
    dataset.validate()
    device = params.device()
    first = dataset.head(batch_size).to(device)
    with torch.no_grad():
        layout = run_pair(model, guide, first)
    check_log_densities(layout, first)
    return Prepared(dataset, layout, layout.global_latents(), device)


def draw_terms(
    model, guide, prepared: Prepared, num_particles: int, batch_size: int, guide_sums: bool = True
) -> ParticleTerms:
    """K particles over every row (no gradients); ``guide_sums``: the guide's sites marked for
    enumeration are summed (else sampled)."""
    with torch.no_grad():
        return dataset_terms(
            model, guide, prepared.dataset, num_particles, prepared.layout, batch_size,
            prepared.device, guide_sums,
        )


def evaluate(
    model: Callable,
    guide: Callable,
    data,
    num_particles: int = 100,
    *,
    estimator: str = "analytic",
    batch_size: int = 256,
    seed: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Split the ELBO of every datapoint into reconstruction and KL terms.

    Args:
        model, guide: the Pyro pair, with trained parameters in Pyro's param store.
        data: an array (tensor, numpy array, DataFrame; ``model(x)``), a tuple of per-row
            arrays (``model(x, y)``) or a dict of them (``model(x=..., y=...)``).
        num_particles: K draws of q per datapoint (vectorized).
        estimator: ``"analytic"`` computes what has an exact form exactly: the closed-form KL
            where :func:`~ppl_vae.estimators.estimators.closed_form_kl` gives one, and the
            expectation over guide sites marked for enumeration by exact summation (their KL is then
            KL(q(y|x)‖p(y)) exactly); ``"enum"`` sums those sites and samples the rest;
            ``"sampled"`` samples everything (the Monte Carlo term log q − log p). Sites the
            model sums out are summed whatever the estimator
            (:mod:`ppl_vae.estimators.enumeration`).
        batch_size: rows per vectorized pass (memory ∝ batch_size · num_particles); the
            numbers do not depend on it (globals are drawn once per particle).
        seed: seeds the draws without disturbing the caller's RNG stream.
        model_kwargs: constant keyword arguments passed to model and guide with every call.

    Returns:
        one row per datapoint: ``elbo``, ``elbo_se`` (Monte Carlo standard error over the K
        particles), ``reconstruction`` (every log p term that is not a latent's prior: the
        observed sites and the model's ``pyro.factor`` terms, ``attrs["factors"]``), ``kl`` and
        ``kl[SITE]`` per local site of q (auxiliary sites and the guide's factors included: every
        term ``Trace_ELBO`` subtracts as log q), with ``elbo == reconstruction - kl``.
        ``attrs``: ``kl_method`` (site → ``"closed-form"``, ``"sampled"``,
        ``"enumerated (exact)"`` or ``"log q term (guide factor or observed)"``, global sites
        and the sites the model sums out too; the latter have no KL column: they enter
        ``reconstruction``, or the KL of the guide site whose prior they are a parent of),
        ``joint`` (the data set's ``elbo``, ``elbo_se``, ``reconstruction``, ``kl``,
        ``kl_global``), ``global_sites`` and ``per_row`` (what a row's numbers mean; see the
        module doc).
    """
    record = get(estimator)
    closed_form = record.closed_form_kl
    guide_sums = record.enumerates or closed_form  # the exact parts exact
    check_positive(num_particles=num_particles, batch_size=batch_size)
    with seeded(seed):
        prepared = prepare(model, guide, data, batch_size, model_kwargs)
        terms = draw_terms(model, guide, prepared, num_particles, batch_size, guide_sums)
    g = terms.globals
    kls = {s: terms.kl(s, closed_form) for s in terms.log_q}
    global_kls = {s: g.kl(s, closed_form) for s in g.log_q}
    layout = prepared.layout
    summed = set(guide_enumerated(layout.guide)) if guide_sums else set()
    guide_terms = {n for n, s in layout.guide.nodes.items() if is_guide_factor(s)}
    methods = {
        s: ENUMERATED if s in summed else GUIDE_TERM if s in guide_terms
        else CLOSED_FORM if closed_form and closed[s] is not None else SAMPLED
        for closed in (terms.closed_kl, g.closed_kl)
        for s in closed
    } | dict.fromkeys(model_enumerated(layout.model, layout.guide), ENUMERATED)
    kl_total = sum(kls.values(), torch.zeros_like(terms.log_likelihood))
    per_particle = terms.log_likelihood - kl_total
    frame = {
        "reconstruction": terms.log_likelihood.mean(0),
        "kl": kl_total.mean(0),
        "elbo_se": _se(per_particle),
    } | {f"kl[{s}]": v.mean(0) for s, v in kls.items()}
    frame = {k: v.double().cpu().numpy() for k, v in frame.items()}
    frame["elbo"] = frame["reconstruction"] - frame["kl"]  # exact in float64
    columns = ["elbo", "elbo_se", "reconstruction", "kl"] + [f"kl[{s}]" for s in kls]
    result = pd.DataFrame(frame)[columns]
    result.index.name = "datapoint"
    kl_global = sum(global_kls.values(), torch.zeros_like(g.log_likelihood))
    joint = per_particle.sum(1) + g.log_likelihood - kl_global
    result.attrs |= {
        "kl_method": methods,
        "estimator": estimator,
        "num_particles": num_particles,
        "global_sites": prepared.global_sites,
        "factors": [n for n, s in layout.model.nodes.items() if is_factor(s)],
        "per_row": PER_ROW_GIVEN_GLOBALS if prepared.global_sites else PER_ROW_LOCAL,
        "joint": {
            "elbo": float(joint.double().mean()),
            "elbo_se": float(_se(joint.unsqueeze(1))[0]),
            "reconstruction": float((terms.log_likelihood.sum(1) + g.log_likelihood).mean()),
            "kl": float((kl_total.sum(1) + kl_global).double().mean()),
            "kl_global": float(kl_global.double().mean()),
        },
    }
    return result


def _se(per_particle: torch.Tensor) -> torch.Tensor:
    """Monte Carlo standard error of the mean over particles (dim 0); NaN for one particle."""
    k = per_particle.shape[0]
    if k < 2:
        return torch.full_like(per_particle[0], float("nan"))
    return per_particle.double().std(0) / math.sqrt(k)


@dataclass(frozen=True)
class LogWeights:
    """Importance log weights of K particles: ``local`` per row ``(K, N)``, ``joint`` of the
    whole data set ``(K,)``, the global sites (empty: the rows are independent) and the
    guide's sites in the data plate (empty: a row's weight is exact given the globals)."""

    local: torch.Tensor
    joint: torch.Tensor
    global_sites: list[str]
    local_sites: list[str]


def log_weights(model: Callable, guide: Callable, data, num_samples: int, how: Mapping
                ) -> LogWeights:
    """:class:`LogWeights` of ``num_samples`` particles, ``how["particle_batch"]`` at a time,
    each chunk of particles drawing its globals once for every row; ``how`` holds
    ``batch_size``, ``particle_batch``, ``seed`` and ``model_kwargs`` as
    :func:`log_likelihood` takes them."""
    local, joint = [], []
    batch_size, chunk = how["batch_size"], how["particle_batch"]
    check_positive(num_samples=num_samples, batch_size=batch_size, particle_batch=chunk)
    with seeded(how["seed"]):
        prepared = prepare(model, guide, data, batch_size, how["model_kwargs"])
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            terms = draw_terms(model, guide, prepared, k, batch_size)
            local.append(terms.log_weights())
            joint.append(terms.joint_log_weight())
    guide = prepared.layout.guide.nodes.items()
    local_sites = [n for n, s in guide if is_guide_sample(s) and prepared.layout.is_local(s)]
    return LogWeights(torch.cat(local), torch.cat(joint), prepared.global_sites, local_sites)


def importance_log_weights(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 1000,
    *,
    batch_size: int = 256,
    particle_batch: int = 100,
    seed: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """log w = log p(x_n, z_n | θ) − log q(z_n | x_n, θ) per draw and datapoint, shape (K, N).

    Draws are vectorized ``particle_batch`` at a time. These weights feed the IWAE bound
    (:func:`log_likelihood`) and the Pareto k̂ diagnostic. With global latents θ they are the
    local part given θ_k ~ q(θ); the whole data set's weights are :func:`log_weights`' ``joint``.
    """
    how = dict(batch_size=batch_size, particle_batch=particle_batch, seed=seed,
               model_kwargs=model_kwargs)
    return log_weights(model, guide, data, num_samples, how).local


def log_likelihood(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 1000,
    *,
    batch_size: int = 256,
    particle_batch: int = 100,
    seed: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> pd.Series:
    """Importance-sampled log p(x) per datapoint: the IWAE bound with K = ``num_samples``.

    log (1/K) Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x) (Burda et al. 2016). It is a lower bound on
    log p(x) in expectation, and at least as tight as the ELBO. ``attrs["joint"]`` is the bound
    of log p(X) for the whole data set: the sum of the rows without global latents, else the
    log-mean of the joint weights. With global latents a row's number is
    log (1/K) Σ_k p(x_n, z_k | θ_k)/q(z_k | x_n, θ_k): the pointwise predictive density under
    q(θ), not a bound (``attrs["per_row"]`` says which).
    """
    how = dict(batch_size=batch_size, particle_batch=particle_batch, seed=seed,
               model_kwargs=model_kwargs)
    weights = log_weights(model, guide, data, num_samples, how)
    values = torch.logsumexp(weights.local, dim=0) - math.log(num_samples)
    series = pd.Series(values.double().cpu().numpy(), name="log_likelihood")
    series.index.name = "datapoint"
    if weights.global_sites:
        joint = float(torch.logsumexp(weights.joint.double(), 0) - math.log(num_samples))
        per_row = "pointwise predictive density given the global latents drawn from q; not a bound"
    else:
        joint, per_row = float(series.sum()), "IWAE lower bound of log p(x_n)"
    series.attrs |= {"joint": joint, "global_sites": weights.global_sites, "per_row": per_row}
    return series
