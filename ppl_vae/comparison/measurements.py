"""The tables of a comparison, below the report and the figures that read them.

:class:`ComparisonTables` holds the measurements; :class:`~ppl_vae.Comparison` is one, with
the ways to save and load it. The report and the figures take the tables, so that they need
not import the comparison that writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd

from .. import arviz_compat


@dataclass(frozen=True)
class ComparisonTables:
    """The measurements of :func:`~ppl_vae.compare_estimators` as pandas DataFrames, and its
    settings (the attributes are described on :class:`~ppl_vae.Comparison`)."""

    summary: pd.DataFrame
    differences: pd.DataFrame
    runs: pd.DataFrame
    curves: pd.DataFrame
    gradients: pd.DataFrame
    estimates: pd.DataFrame
    draws: pd.DataFrame
    sites: pd.DataFrame
    elpd: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every DataFrame by its attribute name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}

    def elpd_data(self) -> dict[str, Any]:
        """ArviZ's ``ELPDData`` of every run's held-out ELPD, named ``"ESTIMATOR, seed S"``:
        what ``az.compare`` takes (``ppl_vae.arviz_compat.compare`` under either
        generation)."""
        runs = self.runs.set_index(["estimator", "seed"])
        return {
            f"{estimator}, seed {seed}": arviz_compat.elpd_data(
                rows["elpd"].to_numpy(), rows["pareto_k"].to_numpy(),
                p=runs.loc[(estimator, seed), "elpd_p"], num_samples=self.settings["ll_samples"],
                extras={"iwae_i": rows["iwae"].to_numpy()},
            )
            for (estimator, seed), rows in self.elpd.groupby(["estimator", "seed"], sort=False)
        }
