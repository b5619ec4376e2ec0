"""The one place that calls ArviZ: conversion, PSIS, ``ELPDData`` and ``compare``, summaries,
NetCDF files and plots.

The rest of ppl_vae builds plain dicts of numpy arrays (``{group: {variable: array}}`` with
dims ``(chain, draw, ...)`` for sampled groups) and reads results back as numpy arrays
through the functions here, so that nothing else depends on the ArviZ generation installed:

- arviz 0.20 – 0.23 (what Python 3.11 installs): ``arviz.InferenceData``, ``az.psislw``,
  matplotlib plots returning axes — :mod:`._arviz0`;
- arviz ≥ 1.0 (Python ≥ 3.12): an xarray ``DataTree`` built with ``arviz_base``, PSIS from
  ``arviz_stats``, plots from ``arviz_plots`` returning a ``PlotCollection`` — :mod:`._arviz1`.

This module picks one by the installed version and adds the generation-neutral parts. Plot
functions return a matplotlib ``Figure`` under both. A public module of the package root, below
every layer. May import: nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

GENERATION = 0 if version("arviz").startswith("0.") else 1

if GENERATION == 0:
    from . import _arviz0 as _native
else:
    from . import _arviz1 as _native

InferenceData, ELPDData = _native.InferenceData, _native.ELPDData
dataset, combine, groups, load = _native.dataset, _native.combine, _native.groups, _native.load
psislw, raw_summary = _native.psislw, _native.raw_summary
plot_posterior, plot_ppc, plot_khat = _native.plot_posterior, _native.plot_ppc, _native.plot_khat
plot_density = _native.plot_density
elpd_fields, compare, plot_loo_pit = _native.elpd_fields, _native.compare, _native.plot_loo_pit

__all__ = [
    "ELPDData",
    "GENERATION",
    "InferenceData",
    "compare",
    "coordinate",
    "draws",
    "ecdf_band",
    "elpd_data",
    "elpd_fields",
    "from_dict",
    "good_k",
    "groups",
    "load",
    "num_chains",
    "plot_density",
    "plot_khat",
    "plot_loo_pit",
    "plot_posterior",
    "plot_ppc",
    "psislw",
    "save",
    "summary",
    "variables",
]

Groups = Mapping[str, Mapping[str, np.ndarray]]


def from_dict(
    groups: Groups,
    dims: Mapping[str, Mapping[str, Sequence[str]]],
    coords: Mapping[str, Sequence],
    attrs: Mapping[str, object],
    group_attrs: Mapping[str, Mapping[str, object]] | None = None,
) -> InferenceData:
    """``{group: {var: array}}`` with ``{group: {var: dims}}`` → the generation's object.

    Dims are given per group because one name (the observed site ``x``) is both observed data
    ``(obs, x_dim_0)`` and a log-likelihood ``(chain, draw, obs)``. ``observed_data`` has no
    ``(chain, draw)`` dims; ``attrs`` go on every group, ``group_attrs[group]`` on that one.
    """
    return combine(
        {
            group: dataset(
                dict(variables),
                attrs=dict(attrs) | dict((group_attrs or {}).get(group, {})),
                coords={k: list(v) for k, v in coords.items()},
                dims={k: list(v) for k, v in dims.get(group, {}).items()},
                sampled=group != "observed_data",
            )
            for group, variables in groups.items()
        }
    )


def good_k(num_samples: int) -> float:
    """ArviZ's k̂ threshold for ``num_samples`` draws, min(1 − 1/log10 S, 0.7) (0.7 for one
    draw; Vehtari et al. 2024): above it the PSIS estimate is unreliable. Both
    generations' ``loo`` use it for ``warning`` and ``good_k``."""
    return min(1 - 1 / np.log10(num_samples), 0.7) if num_samples > 1 else 0.7


def elpd_data(
    elpd_i: np.ndarray,
    pareto_k: np.ndarray,
    *,
    p: float,
    num_samples: int,
    extras: Mapping[str, object] | None = None,
    dim: str = "datapoint",
) -> ELPDData:
    """The generation's own LOO result (:data:`ELPDData`, log scale) from pointwise values:
    ``elpd`` their sum, ``se`` = sqrt(N · Var(elpd_i)) as ArviZ computes it, ``warning`` when
    any k̂ exceeds :func:`good_k`. Arrays among ``extras`` are pointwise (dim ``dim``), the
    rest are kept as given; ``elpd["name"]`` reads them under both generations."""
    elpd_i = np.asarray(elpd_i, dtype=float)
    pareto_k = np.asarray(pareto_k, dtype=float)
    coords = {dim: np.arange(elpd_i.size)}

    def pointwise(values: np.ndarray) -> xr.DataArray:
        return xr.DataArray(np.asarray(values, dtype=float), dims=[dim], coords=coords)

    threshold = good_k(num_samples)
    return _native.elpd_data(
        elpd=float(elpd_i.sum()),
        se=float(np.sqrt(elpd_i.size * np.var(elpd_i))),
        p=float(p),
        n_samples=int(num_samples),
        n_data_points=int(elpd_i.size),
        warning=bool(np.any(pareto_k > threshold)),
        good_k=threshold,
        elpd_i=pointwise(elpd_i),
        pareto_k=pointwise(pareto_k),
        extras={
            name: pointwise(value) if isinstance(value, np.ndarray) else value
            for name, value in (extras or {}).items()
        },
    )


def draws(idata: InferenceData, var: str, group: str = "posterior") -> np.ndarray:
    """The values of ``group/var`` as a numpy array (``(chain, draw, ...)`` for samples)."""
    return np.asarray(idata[group][var].values)


def variables(idata: InferenceData, group: str = "posterior") -> dict[str, tuple[str, ...]]:
    """The variables of ``group`` and their dims."""
    return {name: tuple(var.dims) for name, var in idata[group].data_vars.items()}


def coordinate(idata: InferenceData, group: str, dim: str) -> np.ndarray:
    return np.asarray(idata[group][dim].values)


def num_chains(idata: InferenceData) -> int:
    return int(idata["posterior"].sizes["chain"])


def summary(idata: InferenceData, var_names: Sequence[str] | None = None) -> pd.DataFrame:
    """ArviZ's summary: mean, sd, 94% HDI, MCSE and ESS; ``r_hat`` only with ≥ 2 chains.

    The columns are the generation's own (0.2x ``hdi_3%``/``hdi_97%``, 1.x
    ``hdi94_lb``/``hdi94_ub``). With one chain R-hat compares the chain's halves only (1.x
    gives NaN), which says nothing about whether independent fits agree, so the column is
    dropped rather than shown as if it meant that.
    """
    table = raw_summary(idata, list(var_names) if var_names else None)
    if num_chains(idata) < 2:
        table = table.drop(columns=["r_hat"], errors="ignore")
    return table


def save(idata: InferenceData, path: str | Path) -> None:
    """Write every group to one NetCDF file (h5netcdf engine); :func:`load` reads it back."""
    idata.to_netcdf(str(path), engine="h5netcdf")


def ecdf_band(num_samples: int, points: np.ndarray, prob: float, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """A simultaneous ``prob`` band for the ECDF of ``num_samples`` uniform draws at
    ``points`` in (0, 1) (Säilynoja, Bürkner & Vehtari 2022): lower and upper ECDF values.

    arviz 0.2x computes it with its own optimization method
    (``arviz.stats.ecdf_utils.ecdf_confidence_band``); otherwise :func:`simulated_ecdf_band`.
    """
    native = getattr(_native, "ecdf_band", None)
    if native is not None:
        return native(num_samples, points, prob)
    return simulated_ecdf_band(num_samples, points, prob, seed)


def simulated_ecdf_band(num_samples: int, points: np.ndarray, prob: float, seed: int = 0,
                        num_trials: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The simulation method of Säilynoja et al. (2022, section 2.2): for each of
    ``num_trials`` uniform samples, the smallest two-sided pointwise binomial tail level
    γ at which the pointwise band still holds its ECDF; the band is the pointwise
    ``1 − γ*`` band with γ* the ``1 − prob`` quantile of those levels."""
    from scipy import stats

    points = np.asarray(points, dtype=float)
    rng = np.random.default_rng(seed)
    draws = np.sort(rng.random((num_trials, num_samples)), axis=1)
    counts = np.stack([np.searchsorted(d, points, side="right") for d in draws])
    lower_tail = stats.binom.cdf(counts, num_samples, points).min(1)
    upper_tail = stats.binom.sf(counts - 1, num_samples, points).min(1)
    gamma = np.quantile(2 * np.minimum(lower_tail, upper_tail), 1 - prob)
    low, high = stats.binom.interval(1 - gamma, num_samples, points)
    return low / num_samples, high / num_samples
