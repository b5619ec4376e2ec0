"""What the report and its figures read of a comparison: its tables and settings.

:class:`~ppl_vae.Comparison` is one; this type lives below the report and the figures so that
they need not import the comparison that writes them.
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd


class Measurements(Protocol):
    """The tables of :class:`~ppl_vae.Comparison` (see its attributes) and its settings."""

    @property
    def summary(self) -> pd.DataFrame: ...
    @property
    def differences(self) -> pd.DataFrame: ...
    @property
    def runs(self) -> pd.DataFrame: ...
    @property
    def curves(self) -> pd.DataFrame: ...
    @property
    def gradients(self) -> pd.DataFrame: ...
    @property
    def estimates(self) -> pd.DataFrame: ...
    @property
    def draws(self) -> pd.DataFrame: ...
    @property
    def sites(self) -> pd.DataFrame: ...
    @property
    def settings(self) -> dict: ...

    def tables(self) -> dict[str, pd.DataFrame]: ...
