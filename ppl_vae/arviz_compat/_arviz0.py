"""arviz 0.20 – 0.23 (Python 3.11): ``InferenceData``, ``az.psislw``, matplotlib axes."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

with warnings.catch_warnings():  # arviz 0.2x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

InferenceData = az.InferenceData
ELPDData = az.ELPDData


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


def dataset(variables: dict, *, attrs: dict, coords: dict, dims: dict, sampled: bool):
    """One group as an ``xarray.Dataset``; ``sampled`` groups lead with ``(chain, draw)``."""
    return az.dict_to_dataset(
        variables, attrs=attrs, coords=coords, dims=dims, default_dims=None if sampled else []
    )


def combine(datasets: Mapping[str, object]) -> InferenceData:
    return az.InferenceData(**datasets)


def groups(idata: InferenceData) -> list[str]:
    return list(idata.groups())


def load(path: str | Path) -> InferenceData:
    return az.from_netcdf(str(path))


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, truncated, *unnormalized* log weights and k̂ per row, with r_eff = 1.

    ``log_weights`` has shape ``(rows, draws)``; smoothing runs along the last axis. Only the
    largest ``ceil(min(S/5, 3√S))`` weights (the tail) are replaced by Pareto quantiles,
    truncated at the largest raw weight; the others are returned as given. With a tail of
    fewer than 5 draws k̂ is ∞ and nothing is smoothed (az.psislw fails on a single draw).
    """
    log_weights = np.array(log_weights, dtype=float)
    if log_weights.shape[-1] < 2:
        return log_weights.copy(), np.full(log_weights.shape[0], np.inf)
    smoothed, khat = az.psislw(log_weights, reff=1.0, normalize=False)
    return np.asarray(smoothed), np.asarray(khat)


def raw_summary(idata: InferenceData, var_names: list[str] | None) -> pd.DataFrame:
    with _quiet():
        return az.summary(idata, var_names=var_names)


def plot_posterior(idata: InferenceData, var_names: Sequence[str], coords: Mapping) -> Figure:
    """``az.plot_posterior``: one panel per selected element, with its 94% HDI."""
    with _quiet():
        axes = az.plot_posterior(idata, var_names=list(var_names), coords=dict(coords))
    return np.ravel(axes)[0].figure


def plot_ppc(idata: InferenceData, num_pp_samples: int = 50) -> Figure:
    """``az.plot_ppc``: observed data against at most ``num_pp_samples`` replicated sets."""
    sizes = idata.posterior_predictive.sizes
    with _quiet():
        axes = az.plot_ppc(
            idata,
            num_pp_samples=min(num_pp_samples, sizes["chain"] * sizes["draw"]),
            random_seed=0,
        )
    return np.ravel(axes)[0].figure


def plot_khat(khat: np.ndarray) -> Figure:
    """``az.plot_khat`` of one k̂ per datapoint, with the 0.5/0.7/1 lines."""
    with _quiet():
        return az.plot_khat(np.asarray(khat), show_hlines=True).figure


def plot_density(idata: Sequence[InferenceData], labels: Sequence[str], var_names, coords):
    """``az.plot_density``: marginals of several objects overlaid, one panel per element;
    ``coords`` selects elements (e.g. ``{"obs": [0, 1]}``). Returns the axes."""
    selected = [d.sel(**{k: list(v) for k, v in coords.items()}) for d in idata]
    with _quiet():
        axes = az.plot_density(
            selected, data_labels=list(labels), var_names=list(var_names), shade=0.1
        )
    return np.asarray(axes)


def ecdf_band(num_samples: int, points: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """``arviz.stats.ecdf_utils.ecdf_confidence_band`` of uniform draws, by its optimization
    method (Säilynoja et al. 2022): the simultaneous ``prob`` band of the ECDF at ``points``."""
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    points = np.asarray(points, dtype=float)
    with _quiet():
        return ecdf_confidence_band(num_samples, points, points, prob=prob, method="optimized")


def elpd_data(
    *, elpd, se, p, n_samples, n_data_points, warning, good_k, elpd_i, pareto_k, extras
) -> ELPDData:
    """ArviZ's own ``ELPDData`` laid out as ``az.loo(pointwise=True)`` builds it (the same
    index, in the same order), ``extras`` appended as further entries."""
    index = ["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i",
             "pareto_k", "scale", "good_k"]
    values = [elpd, se, p, n_samples, n_data_points, warning, elpd_i.rename("loo_i"),
              pareto_k.rename("pareto_shape"), "log", good_k]
    return az.ELPDData(data=values + list(extras.values()), index=index + list(extras))


def elpd_fields(elpd) -> dict:
    """The fields of an ``ELPDData`` under neutral names (pointwise ones as numpy arrays)."""
    return {
        "elpd": float(elpd["elpd_loo"]), "se": float(elpd["se"]), "p": float(elpd["p_loo"]),
        "n_samples": int(elpd["n_samples"]), "n_data_points": int(elpd["n_data_points"]),
        "warning": bool(elpd["warning"]), "good_k": float(elpd["good_k"]),
        "elpd_i": np.asarray(elpd["loo_i"]), "pareto_k": np.asarray(elpd["pareto_k"]),
    }


def compare(elpds: Mapping[str, ELPDData]) -> pd.DataFrame:
    """``az.compare`` of precomputed ``ELPDData``: stacking weights, ``elpd_diff`` and its
    standard error ``dse`` against the best model."""
    with _quiet():
        table = az.compare(dict(elpds))
    return table.rename(columns={"elpd_loo": "elpd", "p_loo": "p"})


def plot_loo_pit(idata: InferenceData, var_name: str, loo_log_weights: np.ndarray) -> Figure:
    """``az.plot_loo_pit`` of ``var_name`` with the given leave-one-out log weights, one row
    per datapoint ``(rows, draws)`` in ``(chain, draw)`` order, unnormalized and unsmoothed:
    they are Pareto-smoothed here and repeated over the elements of each row."""
    smoothed, _ = psislw(loo_log_weights)
    smoothed -= np.logaddexp.reduce(smoothed, axis=1, keepdims=True)
    y_hat = idata.posterior_predictive[var_name].stack(__sample__=("chain", "draw")).values
    rows, draws = smoothed.shape
    shape = (rows,) + (1,) * (y_hat.ndim - 2) + (draws,)
    weights = np.broadcast_to(smoothed.reshape(shape), y_hat.shape)
    with _quiet():
        axes = az.plot_loo_pit(idata, y=var_name, log_weights=weights)
    return np.ravel(axes)[0].figure
