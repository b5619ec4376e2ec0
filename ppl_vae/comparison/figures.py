"""The comparison's figures, made without pyplot (no global state, the user's backend
untouched): convergence against steps and seconds, gradient variance and SNR along training,
ELBO estimates at fixed parameters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .measurements import ComparisonTables

FIGURES = {
    "convergence_steps.png": "ELBO per datapoint against training steps",
    "convergence_seconds.png": "ELBO per datapoint against training seconds",
    "gradients.png": "gradient variance and SNR along training",
    "estimates.png": "ELBO estimates at fixed parameters",
}

def _band(ax, x: pd.Series, y: pd.DataFrame, label: str) -> None:
    """Mean line and ±1 sd band over seeds (the columns of ``y``)."""
    mean, sd = y.mean(axis=1), y.std(axis=1).fillna(0.0)
    (line,) = ax.plot(x, mean, label=label)
    ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.25)


def _convergence(comparison: ComparisonTables, against: str) -> Figure:
    curves = comparison.curves
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2, sharex=True)
    window = max(1, comparison.settings["num_steps"] // 50)
    for estimator, c in curves.groupby("estimator", sort=False):
        wide = c.pivot(index="step", columns="seed")
        train = wide["train_elbo"].rolling(window, min_periods=1).mean()
        x = wide["time_s"].mean(axis=1) if against == "time_s" else wide.index.to_series()
        _band(axes[0], x, train, estimator)
        held = wide["test_elbo"].notna().all(axis=1)
        _band(axes[1], x[held], wide.loc[held, "test_elbo"], estimator)
    axes[0].set_title(f"training ELBO (running mean over {window} steps)")
    axes[1].set_title("held-out ELBO")
    for ax in axes:
        ax.set_xlabel("step" if against == "step" else "training seconds")
        ax.set_ylabel("ELBO per datapoint (nats)")
        ax.legend()
        ax.grid(alpha=0.3)
    settled = curves[curves["step"] >= comparison.settings["num_steps"] / 20]
    low, high = settled[["train_elbo", "test_elbo"]].stack().quantile([0.01, 1.0])
    for ax in axes:  # the first 5% of steps climb steeply; keep the rest readable
        ax.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low))
    fig.suptitle("mean ± sd over seeds (y axis from the first 5% of steps on)")
    fig.tight_layout()
    return fig


def convergence_steps(comparison: ComparisonTables) -> Figure:
    return _convergence(comparison, "step")


def convergence_seconds(comparison: ComparisonTables) -> Figure:
    return _convergence(comparison, "time_s")


def gradients(comparison: ComparisonTables) -> Figure:
    """Variance and SNR per group against step (log-log, step + 1), at each run's own
    parameters: solid = the estimator's own run, dashed = another estimator's run."""
    g = comparison.gradients
    groups = list(dict.fromkeys(g["param_group"]))
    fig = Figure(figsize=(5 * len(groups), 7))
    axes = fig.subplots(2, len(groups), squeeze=False)
    colours = {e: f"C{i}" for i, e in enumerate(comparison.settings["estimators"])}
    for j, group in enumerate(groups):
        for (run, estimator), part in g[g["param_group"] == group].groupby(
            ["run", "estimator"], sort=False
        ):
            mean = part.groupby("step")[["variance", "snr"]].mean()
            style = "-" if run == estimator else "--"
            label = f"{estimator} (at {run} run's params)"
            for i, column in enumerate(("variance", "snr")):
                axes[i][j].plot(
                    mean.index + 1, mean[column], style, color=colours[estimator], label=label
                )
        axes[0][j].set_title(f"{group}: tr Cov(g)")
        axes[1][j].set_title(f"{group}: SNR = ‖E g‖ / sqrt(tr Cov g)")
        for i in range(2):
            axes[i][j].set_xscale("log")
            axes[i][j].set_yscale("log")
            axes[i][j].set_xlabel("step + 1")
            axes[i][j].grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("gradient variance and signal-to-noise, mean over seeds")
    fig.tight_layout()
    return fig


def estimates(comparison: ComparisonTables) -> Figure:
    """Histograms of the ELBO estimate's draws, all estimators at the same parameters: at
    initialization and at the end of the last estimator's run."""
    d = comparison.draws
    seed = d["seed"].iloc[0]
    first_run, last_run = d["run"].iloc[0], d["run"].iloc[-1]
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    panels = (
        ("initialization", d[(d["step"] == 0) & (d["run"] == first_run)]),
        (f"end of the {last_run} run", d[(d["step"] == d["step"].max()) & (d["run"] == last_run)]),
    )
    for ax, (title, part) in zip(axes, panels, strict=True):
        part = part[part["seed"] == seed]
        bins = np.histogram_bin_edges(part["elbo"], bins=30)
        for estimator, values in part.groupby("estimator", sort=False)["elbo"]:
            ax.hist(values, bins=bins, alpha=0.55, label=f"{estimator} (sd {values.std():.3g})")
        ax.set_title(f"{title}, seed {seed}")
        ax.set_xlabel("minibatch ELBO estimate per datapoint (nats)")
        ax.set_ylabel("draws")
        ax.legend()
    fig.tight_layout()
    return fig


FIGURE_MAKERS = {
    "convergence_steps.png": convergence_steps,
    "convergence_seconds.png": convergence_seconds,
    "gradients.png": gradients,
    "estimates.png": estimates,
}
