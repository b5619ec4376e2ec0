r"""The expected log predictive density of each row, as ArviZ's own ``ELPDData``.

``az.loo`` on an export of a variational fit treats the draws as posterior draws. For local
latents that is not the predictive density: each draw of :math:`z_n` was fitted to
:math:`x_n` itself, and PSIS-LOO over them is the harmonic-mean estimate of
:math:`\log p(x_n)` (weights :math:`1/p(x_n|z_n)`), biased where q is not the posterior and of
infinite variance where it is. :func:`elpd` estimates the pointwise ELPD from the importance
log weights of :func:`~ppl_vae.evaluation.evaluation.log_weights` instead, and returns it in the
object ``az.compare``, ``az.plot_compare``, ``az.plot_khat`` and ``az.plot_elpd`` take:

- **No global latents** (a VAE): the rows are independent given the model's parameters, so
  nothing can be left out of a posterior; the pointwise value is the importance-sampled
  :math:`\log p(x_n) = \log \frac1S \sum_s \tilde w_{n,s}`, :math:`w_{n,s} = p(x_n, z_s) /
  q(z_s|x_n)`, :math:`z_s \sim q(z|x_n)`, with the Pareto-smoothed weights :math:`\tilde w`
  (PSIS; Vehtari et al. 2024) and k̂ their shape. The raw weights give the IWAE bound
  (Burda et al. 2016) beside it. On rows the fit never saw this is the held-out log
  predictive density; on the training rows it is in-sample (the decoder was fitted to them).
- **Global latents θ, in-sample** (``held_out=False``; with or without local latents):
  PSIS-LOO (Vehtari, Gelman & Gabry 2017) over draws :math:`\theta_s \sim q(\theta)`,
  importance-corrected from q to the posterior (Magnusson et al. 2019). With :math:`r_s =
  p(\theta_s, X) / q(\theta_s)` the joint weight and :math:`\ell_{n,s}` the row's log weight
  (:math:`\log p(x_n|\theta_s)`, or with local latents the one-draw estimate :math:`\log
  p(x_n, z_{n,s}|\theta_s) - \log q(z_{n,s}|x_n, \theta_s)`, whose expectation over z is
  :math:`p(x_n|\theta_s)`: the nested estimate), the leave-one-out weights are
  :math:`r_s / e^{\ell_{n,s}} \propto p(\theta_s | X_{-n}) / q(\theta_s)`, and

  .. math:: \widehat{\mathrm{elpd}}_n = \log \frac{\sum_s \tilde v_{n,s} e^{\ell_{n,s}}}
            {\sum_s \tilde v_{n,s}}, \qquad v_{n,s} = r_s e^{-\ell_{n,s}},

  with :math:`\tilde v` Pareto-smoothed; its expectation tends to :math:`\log p(x_n |
  X_{-n})` (numerator and denominator estimate :math:`p(X)` and :math:`p(X_{-n})`). k̂ is the
  shape of :math:`v_{n,\cdot}`, which carries q's error for θ as well as the row's influence.
  ``p_loo`` = lppd − elpd, lppd from the smoothed joint weights; NaN with local latents, whose
  one-draw row weights have no unbiased in-sample average there.
- **Global latents, held out** (``held_out=True``): the predictive density under q(θ),
  :math:`\log \frac1S \sum_s \tilde w_{n,s}` over joint draws :math:`(\theta_s, z_{n,s})`,
  not corrected to the exact posterior (that needs the training rows).

Without leave-one-out there is no in-sample fit to subtract, and ``p_loo`` is NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from .. import arviz_compat
from ..utils.errors import PplVaeError, check_positive
from .evaluation import log_weights

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONSTANT_SPREAD = 1e-3  # max − min of the log weights below which they count as equal

IMPORTANCE = "importance sampling of log p(x_n) with q as the proposal, PSIS-smoothed"
LOO = "PSIS-LOO over draws of the global latents, importance-corrected from q to p"
LOO_NESTED = LOO + "; nested: each row's density given θ is a one-draw estimate over q(z_n)"
HELD_OUT = "held-out data (rows the fit never saw)"
IN_SAMPLE = "in-sample (the rows the fit was trained on)"


def smooth(log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed unnormalized log weights and k̂ per row of ``(rows, draws)``.

    When a row's log weights agree to within :data:`CONSTANT_SPREAD` (q equals the target up
    to float error) there is no tail to fit: k̂ is −∞ (PSIS itself would return +∞ there).
    """
    smoothed, khat = arviz_compat.psislw(log_w)
    return smoothed, np.where(np.ptp(log_w, axis=1) < CONSTANT_SPREAD, -np.inf, khat)


@dataclass(frozen=True)
class Pointwise:
    """Per-row estimates: ``elpd`` (PSIS-smoothed), ``raw`` (the same estimator with the raw
    weights: the IWAE bound where nothing is left out), ``khat``, and the total ``p``."""

    elpd: np.ndarray
    raw: np.ndarray
    khat: np.ndarray
    p: float


def importance(local: np.ndarray) -> Pointwise:
    r"""log (1/S) Σ_s w̃_{n,s} per row from the log weights ``(S, N)``; ``raw`` is the IWAE."""
    num = local.shape[0]
    smoothed, khat = smooth(local.T)
    return Pointwise(logsumexp(smoothed, axis=1) - math.log(num),
                     logsumexp(local, axis=0) - math.log(num), khat, math.nan)


def leave_one_out(local: np.ndarray, joint: np.ndarray, nested: bool) -> Pointwise:
    """PSIS-LOO per row (module doc) from the rows' log weights ``(S, N)`` and the joint log
    weights ``(S,)``; ``p`` is NaN when ``nested``."""
    ratios = joint[None, :] - local.T  # (N, S): log r_s − ℓ_{n,s}
    smoothed, khat = smooth(ratios)
    elpd = logsumexp(_normalized(smoothed) + local.T, axis=1)
    raw = logsumexp(joint) - logsumexp(ratios, axis=1)
    p = math.nan
    if not nested:
        posterior = _normalized(smooth(joint[None, :])[0])  # (1, S)
        p = float(np.sum(logsumexp(posterior + local.T, axis=1)) - elpd.sum())
    return Pointwise(elpd, raw, khat, p)


def _normalized(log_w: np.ndarray) -> np.ndarray:
    return log_w - logsumexp(log_w, axis=-1, keepdims=True)


def elpd(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 1000,
    *,
    held_out: bool,
    seed: int = 0,
    batch_size: int = 256,
    particle_batch: int = 100,
    model_kwargs: Mapping[str, Any] | None = None,
) -> arviz_compat.ELPDData:
    """The ELPD of every row of ``data``, as ArviZ's ``ELPDData`` (module doc for the math).

    Args:
        model, guide: the Pyro pair, with trained parameters in Pyro's param store.
        data: the rows, as for :func:`~ppl_vae.evaluate`.
        num_samples: S draws of q per row (with global latents, S draws of θ shared by all
            rows).
        held_out: ``True`` when the fit never saw ``data``, ``False`` for the training rows.
            Required: with global latents it selects the estimator (the predictive density
            under q(θ), or PSIS-LOO); without them it only labels the result.
        seed, batch_size, particle_batch, model_kwargs: as for :func:`~ppl_vae.log_likelihood`.

    Returns:
        ``arviz.stats.ELPDData`` (arviz 0.2x) or ``arviz_stats.ELPDDataLOO`` (1.x;
        ``ELPDData`` of kind ``loo`` before arviz-stats 1.3), on the log scale: the total,
        ``se`` = sqrt(N · Var(elpd_i)), ``p_loo``/``p``, ``n_samples``, ``n_data_points``,
        ``warning`` (some k̂ above :func:`~ppl_vae.arviz_compat.good_k`, which is also
        warned about), ``good_k``, the pointwise values (``loo_i``/``elpd_i``) and
        ``pareto_k``, with dim ``datapoint``.
        Extra entries, read as ``result["name"]`` under both: ``iwae_i`` (the raw-weight
        estimate: the IWAE bound without global latents), ``method``, ``evaluated_on``
        (held-out or in-sample) and ``global_sites``.
    """
    if not isinstance(held_out, bool):
        raise PplVaeError(
            f"held_out must be True (data the fit never saw) or False (the rows it was "
            f"trained on), not {held_out!r}"
        )
    check_positive(num_samples=num_samples)
    how = dict(batch_size=batch_size, particle_batch=particle_batch, seed=seed,
               model_kwargs=model_kwargs)
    weights = log_weights(model, guide, data, num_samples, how)
    local = weights.local.double().cpu().numpy()
    if weights.global_sites and not held_out:
        nested = bool(weights.local_sites)
        joint = weights.joint.double().cpu().numpy()
        values, method = leave_one_out(local, joint, nested), LOO_NESTED if nested else LOO
    else:
        values, method = importance(local), IMPORTANCE
    result = arviz_compat.elpd_data(
        values.elpd, values.khat, p=values.p, num_samples=num_samples,
        extras={"iwae_i": values.raw, "method": method,
                "evaluated_on": HELD_OUT if held_out else IN_SAMPLE,
                "global_sites": list(weights.global_sites)},
    )
    fields = arviz_compat.elpd_fields(result)
    if fields["warning"]:
        warnings.warn(
            f"Pareto k̂ > {fields['good_k']:.2f} at {_above(fields)} of "
            f"{fields['n_data_points']} rows: "
            "their importance-sampled ELPD is unreliable (q misses mass there); see "
            "result['pareto_k'], az.plot_khat(result)",
            UserWarning,
            stacklevel=2,
        )
    return result


def _above(fields: dict) -> int:
    """How many rows' k̂ exceed ArviZ's threshold."""
    return int(np.sum(fields["pareto_k"] > fields["good_k"]))


def pointwise_table(result: arviz_compat.ELPDData) -> pd.DataFrame:
    """One row per datapoint: ``elpd``, ``pareto_k`` and ``iwae`` of an :func:`elpd` result."""
    fields = arviz_compat.elpd_fields(result)
    table = pd.DataFrame({"elpd": fields["elpd_i"], "pareto_k": fields["pareto_k"],
                          "iwae": np.asarray(result["iwae_i"])})
    table.index.name = "datapoint"
    return table


def summary(result: arviz_compat.ELPDData) -> dict:
    """The totals of an :func:`elpd` result as plain numbers and strings (for JSON)."""
    fields = arviz_compat.elpd_fields(result)
    return {
        "elpd": fields["elpd"], "se": fields["se"], "p": fields["p"],
        "iwae": float(np.sum(result["iwae_i"])), "n_data_points": fields["n_data_points"],
        "n_samples": fields["n_samples"], "good_k": fields["good_k"], "khat_above": _above(fields),
        "method": result["method"], "evaluated_on": result["evaluated_on"],
    }


def has_local_latents(idata: arviz_compat.InferenceData) -> bool:
    """Whether an export of :func:`~ppl_vae.to_inference_data` has latents along its rows."""
    row = idata["posterior"].attrs.get("row_dim", "obs")
    return any(row in dims for dims in arviz_compat.variables(idata).values())


def loo_pit_log_weights(idata: arviz_compat.InferenceData) -> np.ndarray:
    r"""Leave-one-out log weights of an export's draws, ``(rows, draws)`` in ``(chain, draw)``
    order, unnormalized and unsmoothed: they turn draws :math:`\theta_s \sim q(\theta)` into
    draws of :math:`p(\theta | X_{-n})`, for the LOO-PIT of :func:`plot_loo_pit`.

    :math:`\log r_s - \ell_{n,s}`, with :math:`\ell_{n,s} = \log p(x_n | \theta_s)` summed
    over the observed sites (the ``log_likelihood`` group) and :math:`\log r_s = \log
    p(\theta_s) - \log q(\theta_s) + \sum_m \ell_{m,s}` (``global_log_weight`` plus the
    exported rows' ``log_weight``): q corrected to the posterior given the exported rows, as
    in :func:`elpd` (Magnusson et al. 2019) — export every row the guide was fitted to.

    Refused for exports with local latents: leaving row n out leaves z_n's prior, and draws of
    q(z_n | x_n) reweighted to p(z_n) have weights of unbounded variance (q is narrower).
    """
    if has_local_latents(idata):
        raise PplVaeError(
            "the export has latents per row: leaving a row out leaves their prior, and draws "
            "of q(z_n | x_n) cannot be reweighted to it (the weights p(z)/q(z|x_n) have no "
            "finite variance), so there is no LOO-PIT from this export. Use "
            "ppl_vae.arviz_compat.plot_ppc(idata) (az.plot_ppc) for the posterior predictive "
            "check and ppl_vae.elpd(model, guide, data, held_out=...) for the predictive density"
        )
    ell = sum(arviz_compat.draws(idata, name, "log_likelihood")
              for name in arviz_compat.variables(idata, "log_likelihood"))
    joint = arviz_compat.draws(idata, "log_weight", "sample_stats").sum(-1)
    if "global_log_weight" in arviz_compat.variables(idata, "sample_stats"):
        joint = joint + arviz_compat.draws(idata, "global_log_weight", "sample_stats")
    ratios = np.asarray(joint[..., None] - ell, dtype=float)
    chains, draws, rows = ratios.shape
    return ratios.reshape(chains * draws, rows).T


def plot_loo_pit(idata: arviz_compat.InferenceData, var_name: str | None = None) -> Figure:
    """The LOO-PIT of an export's observed site ``var_name`` (default: the only one), drawn by
    the installed ArviZ (``az.plot_loo_pit`` / ``arviz_plots.plot_loo_pit``) with the
    leave-one-out weights of :func:`loo_pit_log_weights`, repeated over the elements of each
    row (a ``to_event`` site), Pareto-smoothed: for each element, P(x̃ ≤ x | X without its
    row); calibrated predictions give uniform values. ``az.plot_loo_pit(idata, y=...)`` alone
    needs one log-likelihood per element and refuses vector rows, and takes q for the
    posterior. Exports with local latents are refused (see :func:`loo_pit_log_weights`).
    Warns when k̂ of the weights exceeds ArviZ's threshold. Returns a matplotlib ``Figure``."""
    observed = list(arviz_compat.variables(idata, "observed_data"))
    if var_name is None and len(observed) != 1:
        raise PplVaeError(f"the export has the observed sites {observed}: pass var_name=")
    var_name = observed[0] if var_name is None else var_name
    if var_name not in observed:
        raise PplVaeError(f"{var_name!r} is not an observed site of the export: {observed}")
    weights = loo_pit_log_weights(idata)
    khat = smooth(weights)[1]
    threshold = arviz_compat.good_k(weights.shape[1])
    if np.any(khat > threshold):
        warnings.warn(
            f"Pareto k̂ of the leave-one-out weights > {threshold:.2f} at "
            f"{int(np.sum(khat > threshold))} of {khat.size} rows: their LOO-PIT is unreliable",
            UserWarning,
            stacklevel=2,
        )
    return arviz_compat.plot_loo_pit(idata, var_name, weights)
