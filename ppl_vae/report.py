"""Tables, figures and a markdown report of a :class:`~ppl_vae.comparison.Comparison`.

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot (no global state,
the user's backend untouched) and saved as PNG; nothing is shown on screen.
The verdict is generated from the numbers (paired 95% intervals over seeds, variance ratios at
the same parameters and on the same draws), never written in advance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .estimators import get
from .files import atomic_write, atomic_write_text
from .kl import AUXILIARY, CLOSED_FORM

if TYPE_CHECKING:
    from .comparison import Comparison

FIGURES = {
    "convergence_steps.png": "ELBO per datapoint against training steps",
    "convergence_seconds.png": "ELBO per datapoint against training seconds",
    "gradients.png": "gradient variance and SNR along training",
    "estimates.png": "ELBO estimates at fixed parameters",
}
LABELS = {
    "test_elbo": "held-out ELBO",
    "log_likelihood": "log p(x), IWAE",
    "exact_log_likelihood": "exact log p(x)",
    "gap": "exact gap log p(x) − ELBO",
}


def write_files(
    comparison: Comparison,
    directory: Path,
    *,
    command: str = "",
    description: str = "a model/guide pair",
) -> None:
    """Write ``report.md`` and its figures into an existing ``directory``, each atomically
    (:meth:`~ppl_vae.Comparison.save` writes the tables beside them)."""
    for name in FIGURES:
        figure = FIGURE_MAKERS[name](comparison)
        atomic_write(directory / name, lambda f, fig=figure: fig.savefig(f, format="png", dpi=110))
    atomic_write_text(directory / "report.md", markdown(comparison, command, description))


def markdown(
    comparison: Comparison, command: str = "", description: str = "a model/guide pair"
) -> str:
    """The report as markdown: verdict, tables, figure and CSV links, command, versions."""
    s = comparison.settings
    seeds = len(s["seeds"])
    lines = [
        "# Estimator comparison: " + ", ".join(s["estimators"]),
        "",
        f"{description}; {s['num_steps']} steps of Adam "
        f"(lr {s['learning_rate']}), minibatch {s['batch_size']}, seeds {s['seeds']}. "
        f"Held-out numbers on {s['evaluated_on']} ({s['eval_rows']} rows).",
        "",
    ]
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    lines += ["## Verdict", "", *[f"- {v}" for v in verdict(comparison)], ""]
    lines += [f"## Headline (mean ± sd over {seeds} seeds)", "", headline(comparison), ""]
    lines += [
        f"Held-out ELBO with K = {s['final_particles']} particles (closed-form KL where "
        f"registered); log p(x) is the IWAE bound with K = {s['ll_samples']}. Time per step is "
        "the median over steps, measurements excluded. Memory: the tensors autograd saves for "
        "the backward pass of one step on a minibatch (and on CUDA the allocator's peak).",
        "",
    ]
    if not comparison.differences.empty:
        lines += ["## Paired differences", "", _differences_table(comparison), ""]
    lines += [
        "## Estimate variance at fixed parameters",
        "",
        f"Standard deviation over {s['num_draws']} draws of the minibatch ELBO estimate and "
        "of its KL term (per datapoint), all estimators on the same draws at the same "
        "parameters; mean over seeds.",
        "",
        _estimates_table(comparison),
        "",
        "## Gradient variance and signal-to-noise",
        "",
        f"tr Cov(g) and SNR = ‖E g‖ / sqrt(tr Cov g) over {s['num_draws']} gradient draws "
        "on the same minibatch, per parameter group, all estimators at the same parameters; "
        "mean over seeds.",
        "",
        _gradients_table(comparison),
        "",
        "## KL per latent site",
        "",
        _table(comparison.sites),
        "",
        "## Figures",
        "",
    ]
    for name, title in FIGURES.items():
        lines += [f"![{title}]({name})", ""]
    lines += ["## Data", ""]
    lines += [f"- [{name}.csv]({name}.csv)" for name in comparison.tables()]
    lines += ["- [settings.json](settings.json)", "", "## Versions", ""]
    lines += [f"- {k} {v}" for k, v in s["versions"].items()]
    return "\n".join(lines) + "\n"


def verdict(comparison: Comparison) -> list[str]:
    """Plain-language findings that follow from the numbers."""
    s = comparison.settings
    reference = s["estimators"][0]
    found = []
    for row in comparison.differences.itertuples():
        if row.metric not in ("test_elbo", "log_likelihood"):
            continue
        what = LABELS[row.metric]
        interval = f"{row.difference:+.3f} nats per datapoint, 95% CI {_ci(row)}, {row.seeds} seeds"
        if row.ci_low > 0 or row.ci_high < 0:
            direction = "higher" if row.difference > 0 else "lower"
            found.append(
                f"**{row.estimator}** reached a {direction} {what} than {reference} ({interval})."
            )
        else:
            found.append(
                f"No difference in {what} between {row.estimator} and {reference} is "
                f"detectable ({interval})."
            )
    found += _variance_findings(comparison)
    summary = comparison.summary.set_index("estimator")
    for estimator in s["estimators"][1:]:
        ratio = summary.loc[estimator, "ms_per_step"] / summary.loc[reference, "ms_per_step"]
        found.append(
            f"A step of {estimator} took {ratio:.2f}× the time of a {reference} step (median)."
        )
    for estimator in (e for e in s["estimators"] if get(e).closed_form_kl):
        own = comparison.sites[comparison.sites["estimator"] == estimator]
        own = own[own["kl"] != AUXILIARY]
        fallen = own[own["kl"] != CLOSED_FORM]
        if fallen.empty:
            continue
        names = ", ".join(fallen["site"])
        found.append(
            f"No closed-form KL applies to {names}: **{estimator} fell back to the sampled KL** "
            "there, "
            + (
                "so on this pair it *is* the sampled estimator (same draws, same numbers)."
                if len(fallen) == len(own)
                else "so it differs from sampled only on the other sites."
            )
        )
    if "gap" in summary.columns:
        for estimator in s["estimators"]:
            found.append(
                f"{estimator}: the exact gap log p(x) − ELBO = KL(q‖p(z|x)) is "
                f"{summary.loc[estimator, 'gap']:.4f} nats per datapoint (the held-out ELBO's "
                f"Monte Carlo standard error is {summary.loc[estimator, 'test_elbo_se']:.4f})."
            )
    return found


def _variance_findings(comparison: Comparison) -> list[str]:
    """Gradient and estimate variance of each estimator against the first, at the same
    parameters and on the same draws."""
    reference, *others = comparison.settings["estimators"]
    found = []
    k = comparison.settings.get("iwae_particles")
    for other in others:
        per_draw = (
            f" (a draw of {other} is K = {k} particles, of {reference} one)"
            if get(other).importance_weighted
            else ""
        )
        g = _at_same_params(comparison.gradients, other)
        if g.empty:
            continue
        encoder = g[g["param_group"] == "encoder"]
        ratios = []
        for when in ("init", "final"):
            row = encoder[encoder["when"] == when]
            if row.empty:
                continue
            ratio = float(row[reference].iloc[0] / row[other].iloc[0])
            ratios.append(f"{ratio:.3g}× at {'initialization' if when == 'init' else 'the end'}")
        if ratios:
            found.append(
                f"Encoder gradient variance, {reference} ÷ {other}, at the same parameters: "
                + " and ".join(ratios)
                + per_draw
                + "."
            )
        e = _at_same_params(comparison.estimates, other, value="elbo_sd")
        for when in ("init", "final"):
            row = e[e["when"] == when]
            if row.empty:
                continue
            ratio = (row[other].iloc[0] / row[reference].iloc[0]) ** 2
            if ratio == 1:  # the same value on the same draws (stl, or a full fallback)
                continue
            at = "initialization" if when == "init" else "the end"
            if ratio <= 1:
                found.append(
                    f"At {at}, {other} removed {100 * (1 - ratio):.0f}% of the variance of "
                    f"the {reference} ELBO estimate on the probe minibatch{per_draw}."
                )
            else:
                why = (
                    f": the {reference} KL term's noise cancelled part of the reconstruction "
                    "term's (see docs/estimators.md)"
                    if get(other).closed_form_kl and not get(reference).closed_form_kl
                    else per_draw
                )
                found.append(
                    f"At {at}, {other}'s ELBO estimate had {ratio:.2f}× the variance of the "
                    f"{reference} one{why}."
                )
    return found


def _at_same_params(frame: pd.DataFrame, other: str, value: str = "variance") -> pd.DataFrame:
    """Every estimator measured at the parameters of ``other``'s own run, init and end,
    averaged over seeds; one column per estimator."""
    mine = frame[frame["run"] == other]
    if mine.empty:
        return pd.DataFrame()
    steps = {"init": mine["step"].min(), "final": mine["step"].max()}
    keys = ["param_group"] if "param_group" in mine.columns else []
    rows = []
    for when, step in steps.items():
        at = mine[mine["step"] == step]
        means = at.groupby(keys + ["estimator"])[value].mean()
        wide = means.unstack("estimator").reset_index() if keys else means.to_frame().T
        rows.append(wide.assign(when=when))
    return pd.concat(rows, ignore_index=True)


def headline(comparison: Comparison) -> str:
    summary = comparison.summary
    columns = {"estimator": summary["estimator"]}
    for metric in ("test_elbo", "log_likelihood", "exact_log_likelihood", "gap", "train_elbo"):
        if metric in summary.columns:
            name = LABELS.get(metric, "train ELBO (last 10%)")
            columns[name] = _pm(summary, metric, 3)
    columns["ms / step"] = _pm(summary, "ms_per_step", 2)
    columns["autograd graph (MB)"] = _pm(summary, "graph_mb", 2)
    if summary["cuda_peak_mb"].notna().any():
        columns["CUDA peak (MB)"] = _pm(summary, "cuda_peak_mb", 1)
    return _table(pd.DataFrame(columns))


def _pm(frame: pd.DataFrame, column: str, digits: int) -> list[str]:
    return [
        f"{m:.{digits}f} ± {sd:.{digits}f}" if not math.isnan(sd) else f"{m:.{digits}f}"
        for m, sd in zip(frame[column], frame[f"{column}_sd"], strict=True)
    ]


def _ci(row) -> str:
    if math.isnan(row.ci_low):
        return "n/a with one seed"
    return f"{row.ci_low:+.3f} to {row.ci_high:+.3f}"


def _differences_table(comparison: Comparison) -> str:
    d = comparison.differences
    return _table(
        pd.DataFrame(
            {
                "estimator − reference": d["estimator"] + " − " + d["reference"],
                "metric": d["metric"].map(LABELS),
                "mean difference": d["difference"].map("{:+.4f}".format),
                "95% CI over seeds": [_ci(r) for r in d.itertuples()],
                "seeds": d["seeds"],
            }
        )
    )


def _estimates_table(comparison: Comparison) -> str:
    e = comparison.estimates
    e = e[e["step"].isin([e["step"].min(), e["step"].max()])]
    table = (
        e.groupby(["run", "step", "estimator"], sort=False)[["elbo_sd", "kl_sd", "elbo_mean"]]
        .mean()
        .reset_index()
    )
    table["parameters"] = [
        "initial" if step == 0 else f"{run} run, step {step}"
        for run, step in zip(table["run"], table["step"], strict=True)
    ]
    table = table.drop_duplicates(["parameters", "estimator"])
    return _table(table[["parameters", "estimator", "elbo_mean", "elbo_sd", "kl_sd"]].round(4))


def _gradients_table(comparison: Comparison) -> str:
    g = comparison.gradients
    g = g[g["step"].isin([g["step"].min(), g["step"].max()])]
    table = (
        g.groupby(["run", "step", "param_group", "estimator"], sort=False)[["variance", "snr"]]
        .mean()
        .reset_index()
    )
    table["parameters"] = [
        "initial" if step == 0 else f"{run} run, step {step}"
        for run, step in zip(table["run"], table["step"], strict=True)
    ]
    table = table.drop_duplicates(["parameters", "param_group", "estimator"])
    table["variance"] = table["variance"].map("{:.4g}".format)
    table["snr"] = table["snr"].map("{:.4g}".format)
    return _table(table[["parameters", "param_group", "estimator", "variance", "snr"]])


def _table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _band(ax, x: pd.Series, y: pd.DataFrame, label: str) -> None:
    """Mean line and ±1 sd band over seeds (the columns of ``y``)."""
    mean, sd = y.mean(axis=1), y.std(axis=1).fillna(0.0)
    (line,) = ax.plot(x, mean, label=label)
    ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.25)


def _convergence(comparison: Comparison, against: str) -> Figure:
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


def convergence_steps(comparison: Comparison) -> Figure:
    return _convergence(comparison, "step")


def convergence_seconds(comparison: Comparison) -> Figure:
    return _convergence(comparison, "time_s")


def gradients(comparison: Comparison) -> Figure:
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


def estimates(comparison: Comparison) -> Figure:
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
