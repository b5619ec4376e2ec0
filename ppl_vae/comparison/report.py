"""The markdown report of a :class:`~ppl_vae.comparison.comparison.Comparison`, beside its PNG
figures (:mod:`ppl_vae.comparison.figures`); nothing is shown on screen.

The verdict is generated from the numbers (paired 95% intervals over seeds, variance ratios at
the same parameters and on the same draws), never written in advance.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import arviz_compat
from ..estimators.estimators import get
from ..estimators.kl import AUXILIARY, CLOSED_FORM
from ..utils.files import atomic_write, atomic_write_text
from .figures import FIGURE_MAKERS, FIGURES
from .measurements import ComparisonTables

LABELS = {
    "test_elbo": "held-out ELBO",
    "log_likelihood": "log p(x), IWAE",
    "elpd": "ELPD (PSIS)",
    "exact_log_likelihood": "exact log p(x)",
    "gap": "exact gap log p(x) − ELBO",
    "amortization_gap": "amortization gap",
    "approximation_gap": "approximation gap",
}


def write_files(
    comparison: ComparisonTables,
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
    comparison: ComparisonTables, command: str = "", description: str = "a model/guide pair"
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
    if not comparison.elpd.empty:
        lines += ["## Model comparison (az.compare)", "", _compare_table(comparison), ""]
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


def verdict(comparison: ComparisonTables) -> list[str]:
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
    found += _gap_findings(comparison)
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


def _gap_findings(comparison: ComparisonTables) -> list[str]:
    """The gap split per estimator, and each estimator's difference to the first, paired by
    seed with its 95% interval (or why the split is missing)."""
    s = comparison.settings
    if s.get("gap_skipped"):
        return [f"No amortization/approximation split: {s['gap_skipped']}."]
    summary = comparison.summary.set_index("estimator")
    if "amortization_gap" not in summary.columns:
        return []
    seeds = len(s["seeds"])
    found = [
        f"{estimator}: of log p(x) − ELBO on the first {s['gap_rows']} held-out rows, the "
        f"amortization gap is {_mean_sd(summary, estimator, 'amortization_gap')} and the "
        f"approximation gap {_mean_sd(summary, estimator, 'approximation_gap')} nats per "
        f"datapoint (mean ± sd over {seeds} seeds; Cremer et al. 2018)."
        for estimator in s["estimators"]
    ]
    unsettled = comparison.runs.get("gap_still_improving")
    if unsettled is not None and unsettled.max() > 0:
        found.append(
            f"The per-datapoint optimization of q was still improving at up to "
            f"{int(unsettled.max())} of the {s['gap_rows']} rows in a run (gap_steps = "
            f"{s['gap_steps']}): there the amortization gap is a lower estimate."
        )
    for row in comparison.differences.itertuples():
        if row.metric not in ("amortization_gap", "approximation_gap"):
            continue
        interval = f"{row.difference:+.3f} nats, 95% CI {_ci(row)}, {row.seeds} seeds"
        if row.ci_low > 0 or row.ci_high < 0:
            size = "larger" if row.difference > 0 else "smaller"
            found.append(f"**{row.estimator}** left a {size} {LABELS[row.metric]} than "
                         f"{row.reference} ({interval}).")
        else:
            found.append(f"No difference in the {LABELS[row.metric]} between {row.estimator} "
                         f"and {row.reference} is detectable ({interval}).")
    return found


def _mean_sd(summary: pd.DataFrame, estimator: str, column: str) -> str:
    mean, sd = summary.loc[estimator, column], summary.loc[estimator, f"{column}_sd"]
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _variance_findings(comparison: ComparisonTables) -> list[str]:
    """Gradient and estimate variance of each estimator against the first, at the same
    parameters and on the same draws."""
    reference, *others = comparison.settings["estimators"]
    found = []
    k = comparison.settings.get("iwae_particles")
    for other in others:
        weighted = [e for e in (other, reference) if get(e).importance_weighted]
        per_draw = (  # said where one draw is K particles and the other's one
            f" (a draw of {weighted[0]} is K = {k} particles, of "
            f"{reference if weighted[0] == other else other} one)"
            if len(weighted) == 1
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


def headline(comparison: ComparisonTables) -> str:
    summary = comparison.summary
    columns = {"estimator": summary["estimator"]}
    for metric in ("test_elbo", "log_likelihood", "elpd", "exact_log_likelihood", "gap",
                   "amortization_gap", "approximation_gap", "train_elbo"):
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


def _differences_table(comparison: ComparisonTables) -> str:
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


def _compare_table(comparison: ComparisonTables) -> str:
    """ArviZ's ``compare`` of every run's held-out ELPD, and what it means."""
    s = comparison.settings
    table = arviz_compat.compare(comparison.elpd_data())
    shown = pd.DataFrame({
        "run": table.index,
        "rank": table["rank"],
        "ELPD": table["elpd"].map("{:.2f}".format),
        "se": table["se"].map("{:.2f}".format),
        "elpd_diff": table["elpd_diff"].map("{:.2f}".format),
        "dse": table["dse"].map("{:.2f}".format),
        "weight": table["weight"].map("{:.3f}".format),
        "k̂ warning": table["warning"],
    })
    return "\n".join([
        f"Every run's ELPD summed over the {s['eval_rows']} held-out rows (ppl_vae.elpd, S = "
        f"{s['ll_samples']}; see docs/diagnostics.md), ranked by ArviZ's compare: elpd_diff "
        "is the difference to the best run and dse its standard error over the rows; a "
        "difference within about 2 dse is not a difference. k̂ warning: some row's Pareto k̂ "
        "exceeds ArviZ's threshold, so its estimate is unreliable.",
        "",
        _table(shown),
    ])


def _estimates_table(comparison: ComparisonTables) -> str:
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


def _gradients_table(comparison: ComparisonTables) -> str:
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
