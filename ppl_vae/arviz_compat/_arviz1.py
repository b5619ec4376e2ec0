"""arviz ≥ 1.0 (Python ≥ 3.12): a ``DataTree`` built with arviz_base, PSIS from arviz_stats,
plots from arviz_plots (matplotlib backend).

No ``ecdf_band`` here: arviz_stats keeps its simultaneous ECDF band in an internal module
(``arviz_stats.ecdf_utils``) whose functions have changed signature between releases, so the
generation-neutral :func:`ppl_vae.arviz_compat.simulated_ecdf_band` is used instead."""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import arviz_base
import arviz_plots
import arviz_stats
import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats.base import array_stats
from matplotlib.figure import Figure
from scipy.special import logsumexp

InferenceData = xr.DataTree
# arviz_stats 1.3 returns LOO results as ELPDDataLOO; before, as ELPDData of kind "loo"
ELPDData = getattr(arviz_stats, "ELPDDataLOO", arviz_stats.ELPDData)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence notes that do not apply here (e.g. too few chains for R-hat: draws of a guide
    are independent, one chain is fine)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def dataset(variables: dict, *, attrs: dict, coords: dict, dims: dict, sampled: bool):
    """One group as an ``xarray.Dataset``; ``sampled`` groups lead with ``(chain, draw)``."""
    return arviz_base.dict_to_dataset(
        variables,
        attrs=attrs,
        coords=coords,
        dims=dims,
        **({} if sampled else {"sample_dims": []}),
    )


def combine(datasets: Mapping[str, xr.Dataset]) -> xr.DataTree:
    return xr.DataTree.from_dict(dict(datasets))


def groups(idata: xr.DataTree) -> list[str]:
    return list(idata.children)


def load(path: str | Path) -> xr.DataTree:
    """Read a file written by ``save`` fully into memory (the file is closed afterwards)."""
    with xr.open_datatree(str(path), engine="h5netcdf") as tree:
        return tree.load()


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, truncated, *unnormalized* log weights and k̂ per row, with r_eff = 1.

    ``log_weights`` has shape ``(rows, draws)``; smoothing runs along the last axis. Only the
    largest ``floor(3√S)`` weights (``floor(S/5)`` for S ≤ 225; one fewer than arviz 0.2x
    takes when 3√S is not a whole number, so k̂ can differ in the second decimal) are
    replaced by Pareto quantiles, truncated at the largest raw weight; the others are
    returned as given. arviz_stats fits the tail of exp(−values) and returns normalized
    weights: the input is negated, and the scale is put back from the smallest weight, which
    is never in the tail. With a tail of fewer than 5 draws, or all of it equal, k̂ is ∞ and
    nothing is smoothed (as under 0.2x).
    """
    log_weights = np.array(log_weights, dtype=float)
    smoothed = np.empty_like(log_weights)
    khat = np.empty(log_weights.shape[0])
    draws = log_weights.shape[-1]
    if min(draws / 5, 3 * np.sqrt(draws)) < 5:  # arviz_stats fails on a tail this short
        return log_weights.copy(), np.full(log_weights.shape[0], np.inf)
    for row, log_w in enumerate(log_weights):
        try:
            normalized, khat[row] = array_stats.psislw(-log_w, r_eff=1.0)
        except ValueError:  # "n_draws_tail must be at least 5", "All tail values are the same"
            normalized, khat[row] = log_w - logsumexp(log_w), np.inf
        body = np.argmin(log_w)
        smoothed[row] = normalized + (log_w[body] - normalized[body])
    return smoothed, khat


def raw_summary(idata: xr.DataTree, var_names: list[str] | None) -> pd.DataFrame:
    """``arviz_stats.summary`` with the 94% HDI of arviz 0.2x and unrounded numbers."""
    with _quiet():
        return pd.DataFrame(
            arviz_stats.summary(
                idata, var_names=var_names, ci_kind="hdi", ci_prob=0.94, round_to="none"
            )
        )


def _figure(plot: arviz_plots.PlotCollection) -> Figure:
    return plot.viz["figure"].item()


def plot_posterior(idata: xr.DataTree, var_names: Sequence[str], coords: Mapping) -> Figure:
    """``arviz_plots.plot_dist``: one panel per selected element, with its credible interval."""
    with _quiet():
        return _figure(
            arviz_plots.plot_dist(
                idata,
                var_names=list(var_names),
                coords={k: list(v) for k, v in coords.items()},
                figure_kwargs={"layout": "constrained"},  # titles clear of the row above
            )
        )


def plot_ppc(idata: xr.DataTree, num_pp_samples: int = 50) -> Figure:
    """``arviz_plots.plot_ppc_dist``: histograms of the observed data against at most
    ``num_pp_samples`` replicated sets (arviz_plots picks them with its own fixed seed).

    Histograms, not the default KDE: a KDE smears binarized pixels (0/1) over [0, 1] and hides
    the observed share of ones, which the histogram shows next to the replicated shares.
    """
    sizes = idata["posterior_predictive"].sizes
    with _quiet():
        return _figure(
            arviz_plots.plot_ppc_dist(
                idata, num_samples=min(num_pp_samples, sizes["chain"] * sizes["draw"]), kind="hist"
            )
        )


def plot_khat(khat: np.ndarray) -> Figure:
    """``arviz_plots.plot_khat`` of one k̂ per datapoint, with the 0.5/0.7/1 lines.

    arviz_plots reads the k̂ values from the ``pareto_k`` field of a LOO result; here they are
    the guide's importance-weight k̂, handed over in an object with that one field.
    """
    pareto_k = xr.DataArray(np.asarray(khat, dtype=float), dims=["datapoint"], name="pareto_k")
    with _quiet():
        return _figure(
            arviz_plots.plot_khat(
                types.SimpleNamespace(pareto_k=pareto_k),
                hline_values=[0.5, 0.7, 1.0],
                visuals={"hlines": {}},
            )
        )


def plot_density(idata: Sequence[xr.DataTree], labels: Sequence[str], var_names, coords):
    """``arviz_plots.plot_dist`` of several objects overlaid (one colour per label, legend), one
    panel per element; ``coords`` selects elements (e.g. ``{"obs": [0, 1]}``). Returns the axes."""
    with _quiet():
        plot = arviz_plots.plot_dist(
            dict(zip(labels, idata, strict=True)),
            var_names=list(var_names),
            coords={k: list(v) for k, v in coords.items()},
            kind="kde",
            # densities only, as az.plot_density draws them: with unequal draw counts
            # arviz_plots pads the shorter posterior with NaN, which its intervals do not skip
            visuals={
                "credible_interval": False,
                "point_estimate": False,
                "point_estimate_text": False,
            },
        )
        plot.add_legend("model")
    return np.asarray(_figure(plot).axes)


def elpd_data(
    *, elpd, se, p, n_samples, n_data_points, warning, good_k, elpd_i, pareto_k, extras
) -> ELPDData:
    """arviz_stats' own LOO result as ``loo_approximate_posterior`` builds it (log scale,
    ``approx_posterior``: the draws came from q and were importance weighted):
    ``ELPDDataLOO`` from arviz_stats 1.3, ``ELPDData`` of kind ``"loo"`` before. ``extras``
    become further attributes (``elpd["name"]`` reads them)."""
    fields = dict(elpd=elpd, se=se, p=p, n_samples=n_samples, n_data_points=n_data_points,
                  scale="log", warning=warning, good_k=good_k, elpd_i=elpd_i,
                  pareto_k=pareto_k, approx_posterior=True)
    own_kind = ELPDData is not arviz_stats.ELPDData
    result = ELPDData(**fields) if own_kind else ELPDData(kind="loo", **fields)
    for name, value in extras.items():
        setattr(result, name, value)
    return result


def elpd_fields(elpd) -> dict:
    """The fields of an ``ELPDData`` under neutral names (pointwise ones as numpy arrays)."""
    return {
        "elpd": float(elpd.elpd), "se": float(elpd.se), "p": float(elpd.p),
        "n_samples": int(elpd.n_samples), "n_data_points": int(elpd.n_data_points),
        "warning": bool(elpd.warning), "good_k": float(elpd.good_k),
        "elpd_i": np.asarray(elpd.elpd_i), "pareto_k": np.asarray(elpd.pareto_k),
    }


def compare(elpds: Mapping[str, ELPDData]) -> pd.DataFrame:
    """``arviz_stats.compare`` of precomputed ``ELPDData`` (stacking weights, ``elpd_diff``
    and its standard error ``dse``), unrounded, as 0.2x lays it out: ``elpd_diff`` is how far
    each model lies below the best (arviz_stats gives it negative), and each model's
    ``warning`` is added (arviz_stats counts the k̂ above the threshold in ``diag_elpd``)."""
    with _quiet():
        table = arviz_stats.compare(dict(elpds), round_to="none")
    return table.assign(elpd_diff=table["elpd_diff"].abs(),
                        warning=[bool(elpds[name].warning) for name in table.index])


def plot_loo_pit(idata: xr.DataTree, var_name: str, loo_log_weights: np.ndarray) -> Figure:
    """``arviz_plots.plot_loo_pit`` of ``var_name`` with the given leave-one-out log weights,
    one row per datapoint ``(rows, draws)`` in ``(chain, draw)`` order, unnormalized and
    unsmoothed. arviz_stats takes its log ratios as minus the ``log_likelihood`` variable, so
    the plot is drawn from a copy whose ``log_likelihood`` group holds minus these weights,
    repeated over the elements of each row (the recipe of ``arviz_stats.loo_pit``'s own docs
    for a new test quantity); arviz_stats smooths them."""
    predictive = idata["posterior_predictive"][var_name]
    chains, draws = predictive.sizes["chain"], predictive.sizes["draw"]
    rows = loo_log_weights.shape[0]
    ratios = xr.DataArray(
        loo_log_weights.T.reshape(chains, draws, rows), dims=["chain", "draw", predictive.dims[2]]
    )
    _, log_likelihood = xr.broadcast(predictive, -ratios)
    view = idata.copy()
    view["log_likelihood"] = xr.DataTree(xr.Dataset({var_name: log_likelihood}))
    with _quiet():
        return _figure(arviz_plots.plot_loo_pit(view, var_names=[var_name]))
