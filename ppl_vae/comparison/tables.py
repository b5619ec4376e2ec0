"""The comparison's tables, as pure functions of the runs' records (no training here).

Each function takes :class:`~ppl_vae.comparison.measure.RunRecord` objects (or the frames made of
them) and returns pandas DataFrames, so the tables can be built and tested on hand-made records.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .measure import RunRecord

QUALITY = ("test_elbo", "log_likelihood", "elpd", "exact_log_likelihood", "gap",
           "amortization_gap", "approximation_gap")
POINTWISE = ["estimator", "seed", "datapoint", "elpd", "pareto_k", "iwae"]


def assemble(records: list[RunRecord], estimators: list[str]) -> dict[str, pd.DataFrame]:
    """Every table of a :class:`~ppl_vae.Comparison`, by its attribute name."""
    runs = pd.DataFrame([{"estimator": r.estimator, "seed": r.seed, **r.final} for r in records])
    gradients = pd.concat([g for r in records for g in r.gradients], ignore_index=True)
    gradients = gradients[
        ["run", "seed", "step", "estimator", "param_group", "variance", "snr", "mean_norm"]
        + ["num_params"]
    ]
    draws = pd.concat([d for r in records for d in r.draws], ignore_index=True)
    draws = draws[["run", "seed", "step", "estimator", "draw", "elbo", "kl"]]
    estimates = (
        draws.groupby(["run", "seed", "step", "estimator"], sort=False)
        .agg(
            elbo_mean=("elbo", "mean"),
            elbo_sd=("elbo", "std"),
            kl_mean=("kl", "mean"),
            kl_sd=("kl", "std"),
            num_draws=("draw", "size"),
        )
        .reset_index()
    )
    sites = pd.concat(
        [
            r.sites.assign(estimator=r.estimator)
            for r in records
            if r.seed == records[0].seed
        ],
        ignore_index=True,
    )
    sites = sites[["estimator", *[c for c in sites.columns if c != "estimator"]]]
    pointwise = [r.pointwise.reset_index().assign(estimator=r.estimator, seed=r.seed)
                 for r in records if r.pointwise is not None]
    return {
        "summary": summary(runs, estimates, gradients, estimators),
        "differences": differences(runs, estimators),
        "runs": runs,
        "curves": pd.concat([curve(r) for r in records], ignore_index=True),
        "gradients": gradients,
        "estimates": estimates,
        "draws": draws,
        "sites": sites,
        "elpd": pd.concat(pointwise, ignore_index=True)[POINTWISE] if pointwise
        else pd.DataFrame(columns=POINTWISE),
    }


def curve(run: RunRecord) -> pd.DataFrame:
    """Training ELBO at every step and held-out ELBO at the evaluation steps, step 0 first."""
    history = run.history
    curve = pd.DataFrame(
        {
            "estimator": run.estimator,
            "seed": run.seed,
            "step": np.concatenate([[0], history["step"].to_numpy()]),
            "time_s": np.concatenate([[0.0], history["time_s"].to_numpy()]),
            "train_elbo": np.concatenate([[np.nan], history["elbo"].to_numpy()]),
        }
    )
    curve["test_elbo"] = curve["step"].map(run.test_elbo)
    return curve


def summary(runs, estimates, gradients, estimators) -> pd.DataFrame:
    """One row per estimator: means and sds over seeds, variances at its own run's ends."""
    own = estimates[estimates["run"] == estimates["estimator"]]
    own_grads = gradients[gradients["run"] == gradients["estimator"]]
    first, last = own["step"].min(), own["step"].max()
    rows = []
    for estimator in estimators:
        row: dict = {"estimator": estimator}
        per_seed = runs[runs["estimator"] == estimator]
        for column in per_seed.columns.drop(["estimator", "seed"]):
            row[column] = per_seed[column].mean()
            row[f"{column}_sd"] = per_seed[column].std(ddof=1)
        mine = own[own["estimator"] == estimator]
        row["elbo_sd_init"] = mine.loc[mine["step"] == first, "elbo_sd"].mean()
        row["elbo_sd_final"] = mine.loc[mine["step"] == last, "elbo_sd"].mean()
        grads = own_grads[own_grads["estimator"] == estimator]
        for group in sorted(grads["param_group"].unique()):
            in_group = grads[grads["param_group"] == group]
            for when, step in (("init", first), ("final", last)):
                value = in_group.loc[in_group["step"] == step, "variance"].mean()
                row[f"{group}_variance_{when}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def differences(runs: pd.DataFrame, estimators: list[str]) -> pd.DataFrame:
    """Paired (by seed) differences to the first estimator, with 95% t-intervals."""
    columns = ["estimator", "reference", "metric", "difference", "ci_low", "ci_high", "seeds"]
    reference = runs[runs["estimator"] == estimators[0]].set_index("seed")
    rows = []
    for estimator in estimators[1:]:
        other = runs[runs["estimator"] == estimator].set_index("seed")
        for metric in (m for m in QUALITY if m in runs.columns):
            diff = (other[metric] - reference[metric]).dropna()
            n = len(diff)
            half = (
                stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
            )
            mean = float(diff.mean())
            rows.append((estimator, estimators[0], metric, mean, mean - half, mean + half, n))
    return pd.DataFrame(rows, columns=columns)
