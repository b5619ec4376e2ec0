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

tightens to :math:`\log p(x_n)` as :math:`K\to\infty`. All particles are vectorized.
Latent sites outside the data plate (global latents) are shared out evenly over the rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pandas as pd
import pyro
import torch
from pyro import poutine

from .data import Array, as_array, take, validate_data
from .estimators import check_estimator, closed_form_kl
from .rng import seeded
from .traces import PairTraces, is_latent, is_observed, per_datapoint, run_pair, with_particles


@dataclass(frozen=True)
class ParticleTerms:
    """Log-density terms per particle and datapoint, each of shape ``(K, N)``."""

    log_likelihood: torch.Tensor  # sum over observed sites of log p(x|z)
    log_prior: dict[str, torch.Tensor]  # log p(z) per latent site
    log_q: dict[str, torch.Tensor]  # log q(z|x) per latent site
    closed_kl: dict[str, torch.Tensor | None]  # closed-form KL(q||p) per latent site, or None
    # the latent values drawn from the guide per site, with the particle plate's dim
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    # log p(x|z) per observed site, (K, N) each; they sum to ``log_likelihood``
    observed: dict[str, torch.Tensor] = field(default_factory=dict)

    def log_weights(self) -> torch.Tensor:
        """log p(x, z) − log q(z|x) per particle and datapoint."""
        return self.log_likelihood + sum(self.log_prior[s] - self.log_q[s] for s in self.log_prior)

    def kl(self, site: str, closed_form: bool) -> torch.Tensor:
        """The KL term of ``site`` per particle: closed-form if asked for and available."""
        closed = self.closed_kl[site]
        if closed_form and closed is not None:
            return closed
        return self.log_q[site] - self.log_prior[site]


def particle_terms(
    model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, layout: PairTraces
) -> ParticleTerms:
    """Draw ``num_particles`` vectorized particles of the guide on ``x`` and score them."""
    mpn = layout.max_plate_nesting
    guide_trace = poutine.trace(with_particles(guide, num_particles, mpn)).get_trace(x)
    model_trace = poutine.trace(
        poutine.replay(with_particles(model, num_particles, mpn), trace=guide_trace)
    ).get_trace(x)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    n = x.shape[0]

    def rows(value) -> torch.Tensor:
        return per_datapoint(value, layout, n).expand(num_particles, n)

    observed = {
        name: rows(site["log_prob"])
        for name, site in model_trace.nodes.items()
        if is_observed(site)
    }
    log_lik = sum(observed.values(), torch.zeros(num_particles, n, device=x.device))
    latents = [name for name, site in model_trace.nodes.items() if is_latent(site)]
    closed = {}
    for name in latents:
        kl = closed_form_kl(guide_trace.nodes[name], model_trace.nodes[name])
        closed[name] = None if kl is None else rows(kl)
    return ParticleTerms(
        log_lik,
        {s: rows(model_trace.nodes[s]["log_prob"]) for s in latents},
        {s: rows(guide_trace.nodes[s]["log_prob"]) for s in latents},
        closed,
        {s: guide_trace.nodes[s]["value"] for s in latents},
        observed,
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
) -> pd.DataFrame:
    """Split the ELBO of every datapoint into reconstruction and KL terms.

    Args:
        model, guide: the Pyro pair, with trained parameters in Pyro's param store.
        data: tensor, numpy array or DataFrame; rows are datapoints.
        num_particles: K draws of q(z|x) per datapoint (vectorized).
        estimator: ``"analytic"`` uses the closed-form KL where one is registered,
            ``"sampled"`` the Monte Carlo term log q − log p everywhere.
        batch_size: rows per vectorized pass (memory ∝ batch_size · num_particles).
        seed: seeds the draws without disturbing the caller's RNG stream.

    Returns:
        one row per datapoint: ``elbo``, ``elbo_se`` (Monte Carlo standard error over the K
        particles), ``reconstruction``, ``kl`` and ``kl[SITE]`` per latent site, with
        ``elbo == reconstruction - kl``. ``attrs["kl_method"]`` maps each latent site to
        ``"closed-form"`` or ``"sampled"``.
    """
    check_estimator(estimator)
    closed_form = estimator == "analytic"
    frames, methods = [], {}
    for x, layout in _batches(model, guide, data, batch_size, seed):
        terms = particle_terms(model, guide, x, num_particles, layout)
        kls = {s: terms.kl(s, closed_form) for s in terms.log_prior}
        methods = {
            s: "closed-form" if closed_form and terms.closed_kl[s] is not None else "sampled"
            for s in kls
        }
        kl_total = sum(kls.values(), torch.zeros_like(terms.log_likelihood))
        per_particle = terms.log_likelihood - kl_total
        frame = {
            "reconstruction": terms.log_likelihood.mean(0),
            "kl": kl_total.mean(0),
            "elbo_se": per_particle.std(0) / math.sqrt(num_particles)
            if num_particles > 1
            else torch.full_like(kl_total[0], float("nan")),
        } | {f"kl[{s}]": v.mean(0) for s, v in kls.items()}
        frame = {k: v.double().cpu().numpy() for k, v in frame.items()}
        frame["elbo"] = frame["reconstruction"] - frame["kl"]  # exact in float64
        frames.append(pd.DataFrame(frame))
    result = pd.concat(frames, ignore_index=True)
    columns = ["elbo", "elbo_se", "reconstruction", "kl"] + [f"kl[{s}]" for s in methods]
    result = result[columns]
    result.index.name = "datapoint"
    result.attrs["kl_method"] = methods
    result.attrs["estimator"] = estimator
    result.attrs["num_particles"] = num_particles
    return result


def importance_log_weights(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 1000,
    *,
    batch_size: int = 256,
    particle_batch: int = 100,
    seed: int | None = None,
) -> torch.Tensor:
    """log w = log p(x, z) − log q(z|x) for ``num_samples`` draws per datapoint, shape (K, N).

    Draws are vectorized ``particle_batch`` at a time. These weights feed the IWAE bound
    (:func:`log_likelihood`) and the Pareto k̂ diagnostic.
    """
    chunks = []
    for x, layout in _batches(model, guide, data, batch_size, seed):
        per_rows = []
        for start in range(0, num_samples, particle_batch):
            k = min(particle_batch, num_samples - start)
            per_rows.append(particle_terms(model, guide, x, k, layout).log_weights())
        chunks.append(torch.cat(per_rows, dim=0))
    return torch.cat(chunks, dim=1)


def log_likelihood(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 1000,
    *,
    batch_size: int = 256,
    particle_batch: int = 100,
    seed: int | None = None,
) -> pd.Series:
    """Importance-sampled log p(x) per datapoint: the IWAE bound with K = ``num_samples``.

    log (1/K) Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x) (Burda et al. 2016). It is a lower bound on
    log p(x) in expectation, and at least as tight as the ELBO.
    """
    log_w = importance_log_weights(
        model,
        guide,
        data,
        num_samples,
        batch_size=batch_size,
        particle_batch=particle_batch,
        seed=seed,
    )
    values = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    series = pd.Series(values.double().cpu().numpy(), name="log_likelihood")
    series.index.name = "datapoint"
    return series


def _batches(
    model: Callable, guide: Callable, data, batch_size: int, seed: int | None
) -> Iterator[tuple[torch.Tensor, PairTraces]]:
    """Contiguous row batches on the parameters' device, under no_grad and the seed."""
    array: Array = as_array(data)
    validate_data(array)
    device = param_device()
    with torch.no_grad(), seeded(seed):
        layout = None
        for start in range(0, array.shape[0], batch_size):
            index = torch.arange(start, min(start + batch_size, array.shape[0]))
            x = take(array, index).to(device)
            if layout is None or x.shape[0] != batch_size:
                layout = run_pair(model, guide, x)
            yield x, layout


def param_device() -> torch.device:
    """The device of the parameters in Pyro's param store (CPU if it is empty)."""
    for _, value in pyro.get_param_store().items():
        return value.device
    return torch.device("cpu")
