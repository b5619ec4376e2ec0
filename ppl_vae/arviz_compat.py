"""The one place that calls ArviZ: conversion, PSIS, summaries, NetCDF files and plots.

The rest of ppl_vae builds plain dicts of numpy arrays (``{group: {variable: array}}`` with
dims ``(chain, draw, ...)`` for sampled groups) and reads results back as numpy arrays, so
that supporting another ArviZ generation means rewriting this module only.

Supported: arviz 0.20 – 0.23 (``InferenceData``, ``az.psislw``), the versions that install on
Python 3.11. arviz ≥ 1.0 (Python ≥ 3.12) returns an xarray ``DataTree`` from
``arviz_base.from_dict`` and moved PSIS to ``arviz_stats``; it is not supported yet, and
``pyproject.toml`` pins ``arviz<1`` so that pip never installs it under ppl_vae.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

with warnings.catch_warnings():  # arviz 0.2x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

InferenceData = az.InferenceData
Groups = Mapping[str, Mapping[str, np.ndarray]]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ArviZ's notes that do not apply here: the single-chain shape check (draws of a
    guide are independent, one chain is fine) and the deprecation of k̂ arrays in plot_khat."""
    logger = az._log  # arviz 0.2x keeps its own Logger, not registered with logging
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # matplotlib 3.11 vs arviz 0.2x
            yield
    finally:
        logger.setLevel(level)


def from_dict(
    groups: Groups,
    dims: Mapping[str, Mapping[str, Sequence[str]]],
    coords: Mapping[str, Sequence],
    attrs: Mapping[str, object],
) -> InferenceData:
    """``{group: {var: array}}`` with ``{group: {var: dims}}`` → InferenceData.

    Dims are given per group because one name (the observed site ``x``) is both observed data
    ``(obs, x_dim_0)`` and a log-likelihood ``(chain, draw, obs)``. ``observed_data`` has no
    ``(chain, draw)`` dims; ``attrs`` go on every group.
    """
    datasets = {
        group: az.dict_to_dataset(
            dict(variables),
            attrs=dict(attrs),
            coords={k: list(v) for k, v in coords.items()},
            dims={k: list(v) for k, v in dims.get(group, {}).items()},
            default_dims=[] if group == "observed_data" else None,
        )
        for group, variables in groups.items()
    }
    return az.InferenceData(**datasets)


def from_pyro_chains(
    runs: Sequence[object],
    dims: Mapping[str, Sequence[str]],
    coords: Mapping[str, Sequence],
    attrs: Mapping[str, object],
) -> InferenceData:
    """One single-chain ``pyro.infer.MCMC`` run per chain → one InferenceData (``az.from_pyro``).

    Chains run one after another (Pyro's multi-chain CPU mode needs picklable models); the
    runs are converted one by one and concatenated along ``chain``.
    """
    parts = [
        az.from_pyro(
            run,
            log_likelihood=False,
            coords={k: list(v) for k, v in coords.items()},
            dims={k: list(v) for k, v in dims.items()},
        )
        for run in runs
    ]
    idata = parts[0] if len(parts) == 1 else az.concat(*parts, dim="chain")
    for group in idata.groups():
        idata[group].attrs.update(attrs)
    return idata


def draws(idata: InferenceData, var: str, group: str = "posterior") -> np.ndarray:
    """The values of ``group/var`` as a numpy array (``(chain, draw, ...)`` for samples)."""
    return np.asarray(idata[group][var].values)


def variables(idata: InferenceData, group: str = "posterior") -> dict[str, tuple[str, ...]]:
    """The variables of ``group`` and their dims."""
    return {name: tuple(var.dims) for name, var in idata[group].data_vars.items()}


def coordinate(idata: InferenceData, group: str, dim: str) -> np.ndarray:
    return np.asarray(idata[group][dim].values)


def num_chains(idata: InferenceData) -> int:
    return int(idata.posterior.sizes["chain"])


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, truncated, *unnormalized* log weights and k̂ per row, with r_eff = 1.

    ``log_weights`` has shape ``(rows, draws)``; smoothing runs along the last axis. Only the
    largest weights (the tail) are replaced by Pareto quantiles, truncated at the largest raw
    weight; the others are returned as given.
    """
    smoothed, khat = az.psislw(np.array(log_weights, dtype=float), reff=1.0, normalize=False)
    return np.asarray(smoothed), np.asarray(khat)


def summary(idata: InferenceData, var_names: Sequence[str] | None = None) -> pd.DataFrame:
    """``az.summary``: mean, sd, HDI, MCSE and ESS; ``r_hat`` only with ≥ 2 chains.

    With one chain R-hat compares the chain's halves only, which says nothing about whether
    independent fits agree, so the column is dropped rather than shown as if it meant that.
    """
    with _quiet():
        table = az.summary(idata, var_names=list(var_names) if var_names else None)
    if num_chains(idata) < 2:
        table = table.drop(columns=["r_hat"], errors="ignore")
    return table


def save(idata: InferenceData, path: str | Path) -> None:
    """Write every group to one NetCDF file (ArviZ 0.2x uses the h5netcdf engine)."""
    idata.to_netcdf(str(path))


def plot_posterior(idata: InferenceData, var_names: Sequence[str], coords: Mapping) -> np.ndarray:
    with _quiet():
        return np.asarray(az.plot_posterior(idata, var_names=list(var_names), coords=dict(coords)))


def plot_ppc(idata: InferenceData, num_pp_samples: int = 50):
    """Observed data against at most ``num_pp_samples`` replicated data sets."""
    sizes = idata.posterior_predictive.sizes
    with _quiet():
        return az.plot_ppc(
            idata,
            num_pp_samples=min(num_pp_samples, sizes["chain"] * sizes["draw"]),
            random_seed=0,
        )


def plot_khat(khat: np.ndarray):
    with _quiet():
        return az.plot_khat(np.asarray(khat), show_hlines=True)


def plot_density(idata: Sequence[InferenceData], labels: Sequence[str], var_names, coords):
    """Marginal densities of several InferenceData objects overlaid, one panel per element;
    ``coords`` selects elements (e.g. ``{"obs": [0, 1]}``)."""
    selected = [d.sel(**{k: list(v) for k, v in coords.items()}) for d in idata]
    with _quiet():
        axes = az.plot_density(
            selected, data_labels=list(labels), var_names=list(var_names), shade=0.1
        )
    return np.asarray(axes)
