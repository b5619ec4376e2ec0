r"""Can the guide be trusted? Pareto k̂ of the importance weights, per datapoint.

Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: Evaluating variational
inference": with draws :math:`z_s \sim q(z|x_n)` and importance ratios
:math:`w_s = p(x_n, z_s) / q(z_s|x_n)`, fit a generalized Pareto distribution to the largest
ratios (PSIS, Vehtari et al. 2024). Its shape :math:`\hat k` estimates how heavy the tail of
:math:`w` is, i.e. how badly q misses mass of :math:`p(z|x_n)`:

- :math:`\hat k < 0.5`: good — importance sampling with q converges fast;
- :math:`0.5 \le \hat k \le 0.7`: usable — it converges, slowly;
- :math:`\hat k > 0.7`: unreliable — q should not be trusted for this datapoint.

For an amortized guide the diagnostic is computed per datapoint: the weights of the joint
posterior multiply over N points and say nothing. Draws are independent, so r_eff = 1.
When all of a datapoint's log weights agree to within
:data:`~ppl_vae.evaluation.predictive.CONSTANT_SPREAD` (q equals the posterior up to float error)
there is no tail to fit: k̂ is reported as −∞ and the point is good (PSIS itself would return +∞
there). The PSIS estimate of log p(x_n) is :func:`ppl_vae.evaluation.predictive.importance`, the
pointwise values of :func:`ppl_vae.elpd`.

With global latents θ the per-datapoint weights are the local part given θ_k ~ q(θ); whether
q(θ) itself can be trusted is the k̂ of the whole data set's weights w_k (``joint_khat``), and
the verdict is about it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from ..evaluation.evaluation import log_weights
from ..evaluation.predictive import importance
from ..utils.errors import check_positive

GOOD, USABLE = 0.5, 0.7


def vi_diagnostics(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 1000,
    *,
    seed: int = 0,
    batch_size: int = 256,
    particle_batch: int = 100,
    model_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    r"""Pareto k̂, PSIS log-likelihood and ESS of the importance weights, one row per datapoint.

    Columns:
        ``khat``: the Pareto shape of the weights (ArviZ's ``psislw``, r_eff = 1; see
        :func:`ppl_vae.arviz_compat.psislw` for the tail size under each ArviZ generation);
        ``psis_log_likelihood``: :math:`\log \frac1S \sum_s \tilde w_s`, the PSIS-smoothed
        (and truncated) estimate of :math:`\log p(x_n)`;
        ``log_likelihood``: the plain importance-sampled estimate (the IWAE bound);
        ``ess``: the effective sample size of the self-normalized weights,
        :math:`1/\sum_s \bar w_s^2` (Kish), between 1 and ``num_samples``;
        ``verdict``: ``good`` / ``usable`` / ``unreliable`` by the thresholds above.

    ``attrs["verdict"]`` is a one-line summary; ``attrs["num_samples"]`` and ``attrs["seed"]``
    record the draws. With global latents, ``attrs["joint_khat"]`` and
    ``attrs["joint_log_likelihood"]`` are those of the whole data set's weights, and the
    verdict is about them (``attrs["global_sites"]`` lists the sites).
    """
    check_positive(num_samples=num_samples)
    how = dict(batch_size=batch_size, particle_batch=particle_batch, seed=seed,
               model_kwargs=model_kwargs)
    weights = log_weights(model, guide, data, num_samples, how)
    log_w = weights.local.double().cpu().numpy()  # (S, N)
    rows = importance(log_w)
    normalized = np.exp(log_w.T - logsumexp(log_w.T, axis=1, keepdims=True))
    table = pd.DataFrame(
        {
            "khat": rows.khat,
            "psis_log_likelihood": rows.elpd,
            "log_likelihood": rows.raw,
            "ess": 1.0 / np.sum(normalized**2, axis=1),
            "verdict": pd.Categorical(
                [category(k) for k in rows.khat], categories=["good", "usable", "unreliable"]
            ),
        }
    )
    table.index.name = "datapoint"
    table.attrs |= {"verdict": verdict(rows.khat), "num_samples": num_samples, "seed": seed}
    table.attrs["global_sites"] = weights.global_sites
    if weights.global_sites:
        joint = importance(weights.joint.double().cpu().numpy()[:, None])
        joint_khat = float(joint.khat[0])
        table.attrs |= {
            "joint_khat": joint_khat,
            "joint_log_likelihood": float(joint.raw[0]),
            "verdict": joint_verdict(joint_khat, weights.global_sites),
        }
    return table


def category(khat: float) -> str:
    """``good`` (k̂ < 0.5), ``usable`` (0.5 ≤ k̂ ≤ 0.7) or ``unreliable`` (k̂ > 0.7 or NaN)."""
    if khat < GOOD:
        return "good"
    if khat <= USABLE:
        return "usable"
    return "unreliable"


def verdict(khat) -> str:
    """One line: how many datapoints fall in each k̂ range, and what that means for q."""
    khat = np.asarray(khat, dtype=float)
    counts = pd.Series([category(k) for k in khat]).value_counts()
    good, usable, bad = (int(counts.get(c, 0)) for c in ("good", "usable", "unreliable"))
    finite = khat[np.isfinite(khat)]
    worst = f"{finite.max():.2f}" if finite.size else "-inf (weights constant)"
    line = (
        f"Pareto k̂ (Yao et al. 2018): < 0.5 at {good} of {khat.size} datapoints, "
        f"0.5-0.7 at {usable}, > 0.7 at {bad}; max k̂ {worst}: "
    )
    if bad:
        return line + f"q(z|x) is unreliable at {bad} datapoints ({bad / khat.size:.0%})"
    if usable:
        return line + "q(z|x) is usable, with noisy importance-sampling estimates at some points"
    return line + "q(z|x) is good at every datapoint"


def joint_verdict(khat: float, global_sites: list[str]) -> str:
    """One line on the whole data set's weights, which carry q's global latents."""
    line = (
        f"Pareto k̂ of the whole data set's importance weights (global latents {global_sites}): "
        f"{khat:.2f}: "
    )
    return line + {
        "good": "q is good",
        "usable": "q is usable, with noisy importance-sampling estimates",
        "unreliable": "q is unreliable for the global latents",
    }[category(khat)]
