r"""Where the gap log p(x) − ELBO comes from: amortization and approximation (Cremer et al. 2018).

For datapoint :math:`x_n`, with :math:`q_\phi(z|x_n)` the amortized guide and
:math:`q^*_n = \arg\max_{q \in \mathcal{Q}} \mathrm{ELBO}(q; x_n)` the best q of the same
family :math:`\mathcal{Q}` at that datapoint alone (decoder fixed:
:mod:`ppl_vae.evaluation.refine`),

.. math::
    \underbrace{\log p(x_n) - \mathrm{ELBO}(q_\phi; x_n)}_{\mathrm{KL}(q_\phi \| p(z|x_n))}
    = \underbrace{\log p(x_n) - \mathrm{ELBO}(q^*_n; x_n)}_{\text{approximation gap}
      \;=\; \mathrm{KL}(q^*_n \| p(z|x_n))}
    + \underbrace{\mathrm{ELBO}(q^*_n; x_n) - \mathrm{ELBO}(q_\phi; x_n)}_{\text{amortization
      gap} \;\ge\; 0}

(Cremer, Li & Duvenaud 2018, "Inference suboptimality in variational autoencoders", eq. 5).
A large approximation gap calls for a richer family (flows, full covariance, importance
weighting); a large amortization gap for a better encoder (more capacity, longer training,
less KL noise) or for refining its output per datapoint (semi-amortized VI).

Each ELBO is estimated with ``eval_particles`` fresh draws (closed-form KL where registered)
and its Monte Carlo standard error; log p(x) is the pair's exact value where given, else the
IWAE bound with ``iwae_samples`` draws of :math:`q^*_n` (Burda et al. 2016), a lower bound
whose bias shrinks as 1/K; its standard error is the delta method's
:math:`\mathrm{sd}(w)/(\sqrt K\,\bar w)` and its Pareto k̂ says whether that is to be trusted.
The three estimates use independent draws, so the gaps' standard errors add in quadrature; the
gaps sum to the total gap exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import arviz_compat
from ..estimators.particles import particle_terms
from ..pair.dataset import Batch, as_dataset
from ..pair.traces import run_pair
from ..utils import params as param_io
from ..utils.errors import PplVaeError, check_positive, check_seed
from ..utils.rng import seeded
from .refine import elbo_draws, encoder_output, optimize, refined_guide

COLUMNS = [
    "elbo", "elbo_se", "elbo_optimized", "elbo_optimized_se", "log_likelihood",
    "log_likelihood_se", "amortization_gap", "amortization_gap_se", "approximation_gap",
    "approximation_gap_se", "total_gap", "total_gap_se", "khat", "still_improving",
]


def inference_gap(
    model: Callable,
    guide: Callable,
    data,
    *,
    num_steps: int = 500,
    lr: float = 0.05,
    num_particles: int = 16,
    eval_particles: int = 1000,
    iwae_samples: int = 1000,
    exact_log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The amortization and approximation gaps of every datapoint (module doc).

    Args:
        model, guide: the trained pair; the guide's sites local, Normal or
            MultivariateNormal.
        data: the datapoints (as for :func:`~ppl_vae.evaluate`).
        num_steps, lr, num_particles: Adam steps, learning rate (decaying linearly to 1% of
            it) and draws per step of the per-datapoint optimization of q.
        eval_particles: draws behind each ELBO estimate.
        iwae_samples: draws of the optimized q behind the IWAE estimate of log p(x).
        exact_log_likelihood: ``f(x) -> log p(x)`` per row (``ModelGuidePair``'s), for data
            of ``model(x)`` form; used instead of the IWAE estimate.
        batch_size: rows optimized together (memory ∝ batch_size · num_particles).
        seed: seeds every draw.
        model_kwargs: constant keyword arguments passed to model and guide with every call.

    Returns:
        one row per datapoint: ``elbo`` (amortized q), ``elbo_optimized`` (q*),
        ``log_likelihood``, ``amortization_gap``, ``approximation_gap``, ``total_gap``
        (= their sum = log p(x) − elbo), each with ``*_se``; ``khat`` (Pareto k̂ of the IWAE
        weights, NaN with the exact log p(x)); ``still_improving`` (the optimization's
        objective rose by more than 3 standard errors and 0.01 nats over its last 10% of
        steps: q* not reached, its gap split approximate). ``attrs["log_likelihood"]`` says
        exact or IWAE; ``attrs["settings"]`` the arguments; ``attrs["mean"]`` the mean gaps
        per datapoint with their Monte Carlo standard errors.

    Raises:
        PairError: global guide sites, non-Normal sites, or a hierarchical guide.
    """
    check_positive(num_steps=num_steps, num_particles=num_particles,
                   eval_particles=eval_particles, iwae_samples=iwae_samples,
                   batch_size=batch_size)
    check_seed(seed)
    if not (isinstance(lr, int | float) and lr > 0):
        raise PplVaeError(f"lr must be a positive number, not {lr!r}")
    dataset = as_dataset(data, model_kwargs)
    dataset.validate()
    if exact_log_likelihood is not None and dataset.single is None:
        raise PplVaeError("exact_log_likelihood takes data of model(x) form: one array")
    device = param_io.device()
    how = dict(num_steps=num_steps, lr=lr, num_particles=num_particles,
               eval_particles=eval_particles, iwae_samples=iwae_samples)
    with seeded(seed):
        parts = [_rows(model, guide, batch.to(device), how, exact_log_likelihood)
                 for batch in dataset.batches(batch_size)]
    table = pd.concat(parts, ignore_index=True)[COLUMNS]
    table.index.name = "datapoint"
    n = len(table)
    table.attrs |= {
        "log_likelihood": "exact" if exact_log_likelihood else f"IWAE, K = {iwae_samples}",
        "settings": how | {"seed": seed, "batch_size": batch_size},
        "mean": {
            gap: {"mean": float(table[gap].mean()),
                  "se": float(np.sqrt((table[f"{gap}_se"] ** 2).sum()) / n)}
            for gap in ("amortization_gap", "approximation_gap", "total_gap")
        },
        "still_improving": int(table["still_improving"].sum()),
    }
    return table


def _mean_se(draws: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    draws = draws.double()
    return draws.mean(0).cpu().numpy(), (draws.std(0) / math.sqrt(draws.shape[0])).cpu().numpy()


def _rows(model, guide, batch: Batch, how: dict, exact) -> pd.DataFrame:
    with torch.no_grad():
        layout = run_pair(model, guide, batch)
        start = encoder_output(guide, model, batch, layout)
    best, history = optimize(model, guide, batch, layout, start, num_steps=how["num_steps"],
                             lr=how["lr"], num_particles=how["num_particles"])
    q_star = refined_guide(guide, best)
    k = how["eval_particles"]
    with torch.no_grad():
        elbo, elbo_se = _mean_se(elbo_draws(particle_terms(model, guide, batch, k, layout)))
        opt, opt_se = _mean_se(elbo_draws(particle_terms(model, q_star, batch, k, layout)))
        if exact is not None:
            log_p = exact(batch.args[0]).double().cpu().numpy()
            log_p_se, khat = np.zeros_like(log_p), np.full_like(log_p, np.nan)
        else:
            log_p, log_p_se, khat = _iwae(model, q_star, batch, layout, how["iwae_samples"])
    return pd.DataFrame({
        "elbo": elbo, "elbo_se": elbo_se, "elbo_optimized": opt, "elbo_optimized_se": opt_se,
        "log_likelihood": log_p, "log_likelihood_se": log_p_se,
        "amortization_gap": opt - elbo, "amortization_gap_se": np.hypot(opt_se, elbo_se),
        "approximation_gap": log_p - opt, "approximation_gap_se": np.hypot(log_p_se, opt_se),
        "total_gap": log_p - elbo, "total_gap_se": np.hypot(log_p_se, elbo_se),
        "khat": khat, "still_improving": _still_improving(history),
    })


def _iwae(model, guide, batch, layout, samples: int, chunk: int = 100):
    """IWAE estimate of log p(x) per row, its delta-method standard error, and Pareto k̂."""
    parts = [particle_terms(model, guide, batch, min(chunk, samples - s), layout).log_weights()
             for s in range(0, samples, chunk)]
    log_w = torch.cat(parts).double()
    log_p = torch.logsumexp(log_w, 0) - math.log(samples)
    w = torch.exp(log_w - log_p)  # weights over their mean
    se = w.std(0) / math.sqrt(samples)
    khat = arviz_compat.psislw(log_w.T.cpu().numpy())[1]
    return log_p.cpu().numpy(), se.cpu().numpy(), khat


def _still_improving(history: torch.Tensor) -> np.ndarray:
    """Per row: the objective's mean over the last 10% of steps exceeds that over the 10%
    before by more than 3 standard errors and 0.01 nats."""
    window = max(2, history.shape[0] // 10)
    if history.shape[0] < 2 * window:
        return np.zeros(history.shape[1], dtype=bool)
    last, before = history[-window:].double(), history[-2 * window:-window].double()
    rise = last.mean(0) - before.mean(0)
    se = torch.sqrt((last.var(0) + before.var(0)) / window)
    return ((rise > 3 * se) & (rise > 0.01)).cpu().numpy()
