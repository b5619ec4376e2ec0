"""The tables of a comparison, below the report and the figures that read them.

:class:`ComparisonTables` holds the measurements; :class:`~ppl_vae.Comparison` is one, with
the ways to save and load it. The report and the figures take the tables, so that they need
not import the comparison that writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import pandas as pd


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
    settings: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every DataFrame by its attribute name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
