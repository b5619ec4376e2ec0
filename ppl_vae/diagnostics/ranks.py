r"""Is a sample of SBC ranks uniform, and if not, how is q wrong? Pure functions of the ranks.

With :math:`L` draws of q per simulation, a calibrated q gives ranks :math:`r` uniform on
:math:`\{0, \dots, L\}` (Talts et al. 2018, theorem 1): mean :math:`L/2`, variance
:math:`\sigma_0^2 = ((L+1)^2 - 1)/12`. Three tests per coordinate, over :math:`S`
simulations:

- **location**: :math:`z = (\bar r - L/2) / \sqrt{\sigma_0^2/S}`. Ranks piled at the top mean
  the true value lies above most draws of q: q sits *too low* (and vice versa).
- **spread**: :math:`d = (r - L/2)^2` has mean :math:`\sigma_0^2` and variance
  :math:`\mu_4 - \sigma_0^4`, :math:`\mu_4 = (n^2-1)(3n^2-7)/240` with :math:`n = L+1`
  (the discrete uniform's fourth central moment). Too large a mean (a ∪-shaped histogram:
  the truth often in q's tails) means q is *too narrow*; too small (∩-shaped) *too wide*.
- **shape**: Pearson's χ² over ``bins`` equal-width bins of ranks, for any other departure.

A coordinate's verdict is the first test (in that order) that rejects at level
:math:`\alpha / (3C)` for :math:`C` coordinates (Bonferroni): when q is calibrated, the
chance that *any* coordinate is flagged is at most :math:`\alpha` (up to the normal
approximation of the first two tests, good for :math:`S \ge 100`).

The ECDF-difference plot (Säilynoja, Bürkner & Vehtari 2022) shows, per coordinate, the
empirical CDF of the fractional ranks :math:`(r+1)/(L+1)` minus the uniform CDF at the
:math:`L+1` points :math:`i/(L+1)`, with a simultaneous band: a calibrated q's curve stays
inside it everywhere with probability ``prob``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .. import arviz_compat

CALIBRATED = "calibrated"
TOO_NARROW = "too narrow"
TOO_WIDE = "too wide"
TOO_LOW = "biased: q too low"
TOO_HIGH = "biased: q too high"
OTHER = "not uniform (neither shift nor spread)"
VERDICTS = (CALIBRATED, TOO_NARROW, TOO_WIDE, TOO_LOW, TOO_HIGH, OTHER)
TESTS = 3  # location, spread, shape: the Bonferroni family is TESTS × coordinates


def moments(num_draws: int) -> tuple[float, float]:
    """Variance of a uniform rank on {0..L}, and the variance of its squared deviation."""
    n = num_draws + 1
    var = (n**2 - 1) / 12
    mu4 = (n**2 - 1) * (3 * n**2 - 7) / 240
    return var, mu4 - var**2


def rank_bins(num_draws: int, num_simulations: int) -> int:
    """χ² bins: at most 20 and at most L + 1, with at least 5 expected ranks in each."""
    return int(max(2, min(20, num_draws + 1, num_simulations // 5)))


def uniformity(ranks: np.ndarray, num_draws: int, names: list[str], alpha: float = 0.05
               ) -> pd.DataFrame:
    """The three tests and the verdict per coordinate of ``ranks`` ``(S, C)`` (module doc).

    Columns: ``coordinate``, ``mean_rank`` (the mean of r/L: 0.5 when calibrated),
    ``spread`` (mean of (r − L/2)² over its calibrated value: 1 when calibrated, > 1 too
    narrow, < 1 too wide), ``z_location``, ``p_location``, ``z_spread``, ``p_spread``,
    ``chi2``, ``p_chi2``, ``verdict``. ``attrs``: ``alpha``, ``threshold`` (the per-test level),
    ``bins``.
    """
    ranks = np.asarray(ranks, dtype=float)
    s, c = ranks.shape
    var, var_d = moments(num_draws)
    centred = ranks - num_draws / 2
    z_loc = centred.mean(0) / math.sqrt(var / s)
    z_spread = ((centred**2).mean(0) - var) / math.sqrt(var_d / s)
    bins = rank_bins(num_draws, s)
    edges = np.array_split(np.arange(num_draws + 1), bins)
    expected = np.array([len(e) for e in edges]) * s / (num_draws + 1)
    which = np.searchsorted([e[-1] for e in edges], ranks, side="left")
    counts = np.stack([(which == b).sum(0) for b in range(bins)])
    chi2 = (((counts - expected[:, None]) ** 2) / expected[:, None]).sum(0)
    table = pd.DataFrame({
        "coordinate": names,
        "mean_rank": ranks.mean(0) / num_draws,
        "spread": (centred**2).mean(0) / var,
        "z_location": z_loc,
        "p_location": 2 * stats.norm.sf(np.abs(z_loc)),
        "z_spread": z_spread,
        "p_spread": 2 * stats.norm.sf(np.abs(z_spread)),
        "chi2": chi2,
        "p_chi2": stats.chi2.sf(chi2, bins - 1),
    })
    threshold = alpha / (TESTS * c)
    table["verdict"] = pd.Categorical(
        [verdict(row, threshold) for row in table.itertuples()], categories=VERDICTS
    )
    table.attrs |= {"alpha": alpha, "threshold": threshold, "bins": bins}
    return table


def verdict(row, threshold: float) -> str:
    """The first test that rejects (location, spread, shape), read as what is wrong with q."""
    if row.p_location < threshold:
        return TOO_LOW if row.z_location > 0 else TOO_HIGH
    if row.p_spread < threshold:
        return TOO_NARROW if row.z_spread > 0 else TOO_WIDE
    if row.p_chi2 < threshold:
        return OTHER
    return CALIBRATED


def ecdf_difference(ranks: np.ndarray, num_draws: int, prob: float = 0.95, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """ECDF of the fractional ranks minus the uniform CDF, per coordinate, with the
    simultaneous ``prob`` band (module doc).

    Returns ``points`` ``(P,)`` (i/(L+1), i = 0..L+1), ``difference`` ``(P, C)``, ``lower``
    and ``upper`` ``(P,)`` (the band minus the uniform CDF).
    """
    ranks = np.asarray(ranks)
    s = ranks.shape[0]
    points = np.arange(num_draws + 2) / (num_draws + 1)
    below = np.stack([(ranks < i).mean(0) for i in range(num_draws + 2)])  # ECDF at i/(L+1)
    lower, upper = arviz_compat.ecdf_band(s, points[1:-1], prob, seed)
    lower = np.concatenate([[0.0], lower, [1.0]])
    upper = np.concatenate([[0.0], upper, [1.0]])
    return {
        "points": points,
        "difference": below - points[:, None],
        "lower": lower - points,
        "upper": upper - points,
    }
