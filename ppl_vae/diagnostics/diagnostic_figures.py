"""Figures of the guide's calibration and of its gap split, made without pyplot (no global
state): the SBC ECDF-difference plot (Säilynoja, Bürkner & Vehtari 2022) and the amortization
and approximation gaps per datapoint."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

MAX_PANELS = 16


def ecdf_figure(ecdf: dict[str, np.ndarray], names: Sequence[str], verdicts: Sequence[str],
                prob: float = 0.95) -> Figure:
    """One panel per coordinate (the first ``MAX_PANELS``): ECDF of the fractional ranks minus
    the uniform CDF, inside the simultaneous ``prob`` band when q is calibrated."""
    count = min(len(names), MAX_PANELS)
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False))
    x = ecdf["points"]
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.set_visible(False)
            continue
        ax.fill_between(x, ecdf["lower"], ecdf["upper"], step="post", alpha=0.25,
                        color="tab:blue", label=f"{prob:.0%} simultaneous band")
        ax.step(x, ecdf["difference"][:, i], where="post", color="black", lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{names[i]}: {verdicts[i]}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("fractional rank")
    for ax in axes[:, 0]:
        ax.set_ylabel("ECDF − uniform")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    shown = "" if count == len(names) else f" (first {count} of {len(names)} coordinates)"
    fig.suptitle("SBC ranks of the true latents among draws of q" + shown)
    fig.tight_layout()
    return fig


def gap_figure(table: pd.DataFrame) -> Figure:
    """The two gaps per datapoint (histograms), and each datapoint's amortized and optimized
    ELBO against log p(x)."""
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    for column, label in (("amortization_gap", "amortization"),
                          ("approximation_gap", "approximation")):
        left.hist(table[column], bins=30, alpha=0.6,
                  label=f"{label} gap (mean {table[column].mean():.3f})")
    left.set_xlabel("nats")
    left.set_ylabel("datapoints")
    left.set_title("log p(x) − ELBO, split per datapoint")
    left.legend(fontsize=8)
    log_p = table["log_likelihood"]
    right.scatter(log_p, table["elbo"], s=6, label="amortized q(z|x)")
    right.scatter(log_p, table["elbo_optimized"], s=6, label="best q of the family")
    low, high = float(log_p.min()), float(log_p.max())
    right.plot([low, high], [low, high], color="grey", lw=0.8, label="ELBO = log p(x)")
    right.set_xlabel("log p(x)")
    right.set_ylabel("ELBO")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
