"""ppl_vae.arviz_compat under the installed ArviZ generation (0.2x on Python 3.11, 1.x on
Python >= 3.12 via `make test-py312`), and each generation's own calls on ppl_vae's output.

PSIS is checked against truths both generations must meet: weights with an exact Pareto tail
of known shape (k̂ against the true shape, and against a maximum-likelihood fit of the same
tail by scipy), and light-tailed weights. Under arviz 1.x it is also checked against the values
arviz 0.23.4 gave on a fixed array (under 0.2x that would compare arviz with itself).
"""

import re
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from scipy.special import logsumexp
from scipy.stats import genpareto

import ppl_vae
from models import bernoulli_vae
from ppl_vae import arviz_compat
from tests.conftest import requires_arviz0, requires_arviz1
from tests.diagnostics.test_diagnostics import global_model


def native_forest(posteriors: dict, **kwargs) -> None:
    """The installed generation's own forest plot of several labelled posteriors."""
    if arviz_compat.GENERATION == 0:
        az.plot_forest(list(posteriors.values()), model_names=list(posteriors), **kwargs)
    else:
        import arviz_plots

        arviz_plots.plot_forest(posteriors, **kwargs)


@pytest.mark.parametrize("shape", [0.3, 0.9])
def test_psis_recovers_the_shape_of_an_exact_pareto_tail(shape):
    # w = 1 + Lomax(1/k) is Pareto with tail index 1/k: above any cutoff its excess is
    # generalized Pareto with shape k exactly. 20 rows of S = 2000 (tail of 134 draws).
    rows, S = 20, 2000
    w = 1 + np.random.default_rng(0).pareto(1 / shape, size=(rows, S))
    log_w = np.log(w) - 50.0  # far from 0: the unnormalized scale must come back
    smoothed, khat = arviz_compat.psislw(log_w)
    assert khat.shape == (rows,) and np.isfinite(khat).all()
    # sd of one k̂ is about (1 + k)/sqrt(134) <= 0.17; the mean of 20 within 0.1
    assert abs(khat.mean() - shape) < 0.1
    tail = int(np.ceil(3 * np.sqrt(S)))
    for raw, smooth in zip(log_w, smoothed, strict=True):
        body = np.argsort(raw)[: S - tail]
        np.testing.assert_allclose(smooth[body], raw[body], rtol=0, atol=1e-9)
        assert smooth.max() <= raw.max() + 1e-9  # truncated at the largest raw weight


# sd of one k̂ over replicates of S = 20000 draws (tail of M = 425), measured over 300
# replicates under arviz 0.23.4: (1 + k)/√M within 2%, the maximum-likelihood sd
KHAT_SD = {0.2: 0.058, 0.5: 0.072, 0.8: 0.087, 1.2: 0.105}


def tail_mle(log_w: np.ndarray) -> float:
    """scipy's maximum-likelihood shape of a generalized Pareto fit to the largest
    M = ceil(min(S/5, 3√S)) weights, with the location fixed at the next largest weight (the
    threshold); in units of the threshold, where the optimizer converges (the raw weights are
    ~1e-6 of the largest, where it stops short)."""
    S = log_w.size
    M = int(np.ceil(min(S / 5, 3 * np.sqrt(S))))
    log_w = np.sort(log_w)
    excess = np.expm1(log_w[-M:] - log_w[-M - 1])  # (w - u)/u of the tail
    shape, _, _ = genpareto.fit(excess, floc=0.0)
    return shape


@pytest.mark.parametrize("shape", sorted(KHAT_SD))
def test_psis_khat_is_the_tail_shape_and_agrees_with_a_maximum_likelihood_fit(shape):
    # w = U^(-k), U ~ Uniform(0, 1): P(w > t) = t^(-1/k), Pareto with tail index 1/k, so above
    # any threshold u the excess is generalized Pareto with shape k (and scale k·u) exactly
    rows, S = 40, 20000
    log_w = -shape * np.log(np.random.default_rng(11).uniform(size=(rows, S))) - 50.0
    _, khat = arviz_compat.psislw(log_w)
    sd = KHAT_SD[shape]
    assert (np.abs(khat - shape) < 4 * sd).all()  # every replicate
    assert abs(khat.mean() - shape) < 4 * sd / np.sqrt(rows)  # their mean: 0.04 to 0.07
    # the same tail fitted by scipy (MLE, not PSIS's empirical Bayes with its weak prior
    # towards 0.5): under 0.23.4 they differ by 0.005 to 0.018 on average, sd 0.003, at most
    # 0.03 in 1200 replicates; with arviz 1.x's tail of one draw fewer (424) at most 0.034
    mle = np.array([tail_mle(row) for row in log_w])
    np.testing.assert_allclose(khat, mle, rtol=0, atol=0.05)


def test_psis_gives_light_tails_a_small_khat():
    log_w = 0.3 * np.random.default_rng(1).standard_normal((20, 1000))  # log-normal weights
    _, khat = arviz_compat.psislw(log_w)
    assert (khat < 0.5).all()


@pytest.mark.parametrize("S", [1, 2, 4, 20])
def test_too_few_draws_for_a_tail_give_infinite_khat_and_unsmoothed_weights(S):
    """Up to 20 draws leave a tail of fewer than 5 (S/5) under either ArviZ generation: no
    fit, k̂ = ∞ and the weights as given (arviz_stats, and az.psislw at S = 1, fail instead)."""
    log_w = np.random.default_rng(3).normal(size=(3, S))
    smoothed, khat = arviz_compat.psislw(log_w)
    assert np.isinf(khat).all()
    np.testing.assert_allclose(smoothed - smoothed.max(-1, keepdims=True),
                               log_w - log_w.max(-1, keepdims=True), rtol=0, atol=1e-12)


def fixed_log_weights(S: int) -> np.ndarray:
    rng = np.random.default_rng(2018)
    return np.stack(
        [
            0.5 * rng.standard_normal(S),
            2.0 * rng.standard_normal(S),
            np.log1p(rng.pareto(1 / 0.9, S)),
        ]
    )


# arviz_compat.psislw(fixed_log_weights(S)) under arviz 0.23.4 (Python 3.11): k̂ and the
# log-sum of the smoothed weights. arviz 1.x fits the same tail where its tail size agrees
# (S <= 225 a multiple of 5, or 3√S whole: S = 100, 400); at S = 1000 it takes 94 draws
# against 0.2x's 95, and k̂ moves by up to 0.05.
ARVIZ_0_23 = {
    100: ([0.15442848, 1.09007036, 0.79538067], [4.66244508, 6.66100138, 6.33080695], 1e-7),
    400: ([0.48432525, 0.86860455, 0.90326137], [6.1029105, 8.05068198, 7.78326946], 1e-7),
    1000: ([0.19298937, 0.70531894, 0.6538322], [7.03010542, 8.73396499, 8.51429813], 0.05),
}


@requires_arviz1  # under 0.2x, arviz_compat.psislw is az.psislw: arviz against itself
@pytest.mark.parametrize("S", sorted(ARVIZ_0_23))
def test_psis_agrees_with_arviz_0_23_on_a_fixed_array(S):
    khat_0, log_sum_0, tolerance = ARVIZ_0_23[S]
    smoothed, khat = arviz_compat.psislw(fixed_log_weights(S))
    np.testing.assert_allclose(khat, khat_0, rtol=0, atol=tolerance)
    np.testing.assert_allclose(logsumexp(smoothed, axis=1), log_sum_0, rtol=0, atol=tolerance)


def test_psis_without_a_tail_to_fit_gives_infinite_khat_and_raw_weights():
    # 20 draws: a tail of 4 is too short to fit; equal weights have no tail at all
    log_w = np.stack([np.random.default_rng(3).standard_normal(20), np.full(20, -7.0)])
    smoothed, khat = arviz_compat.psislw(log_w)
    assert np.isposinf(khat).all()
    np.testing.assert_allclose(smoothed, log_w, rtol=0, atol=1e-12)


def small_groups(rng: np.random.Generator) -> tuple[dict, dict]:
    groups = {
        "posterior": {"z": rng.normal(size=(2, 30, 3, 2)), "scale": rng.gamma(2.0, size=(2, 30))},
        "posterior_predictive": {"x": rng.normal(size=(2, 30, 3, 4))},
        "log_likelihood": {"x": rng.normal(size=(2, 30, 3))},
        "sample_stats": {"log_weight": rng.normal(size=(2, 30, 3))},
        "observed_data": {"x": rng.normal(size=(3, 4))},
    }
    dims = {
        "posterior": {"z": ["obs", "z_dim_0"], "scale": []},
        "posterior_predictive": {"x": ["obs", "x_dim_0"]},
        "log_likelihood": {"x": ["obs"]},
        "sample_stats": {"log_weight": ["obs"]},
        "observed_data": {"x": ["obs", "x_dim_0"]},
    }
    return groups, dims


def test_from_dict_builds_the_native_object_and_netcdf_round_trips(tmp_path):
    groups, dims = small_groups(np.random.default_rng(4))
    attrs = {"seed": 3, "steps": [10, 20], "estimator": "analytic"}
    idata = arviz_compat.from_dict(groups, dims, {"obs": [4, 8, 15]}, attrs)
    native = az.InferenceData if arviz_compat.GENERATION == 0 else __import__("xarray").DataTree
    assert isinstance(idata, native) and arviz_compat.InferenceData is native
    assert sorted(arviz_compat.groups(idata)) == sorted(groups)
    expected_dims = {
        (g, name): (() if g == "observed_data" else ("chain", "draw")) + tuple(d)
        for g, by_name in dims.items()
        for name, d in by_name.items()
    }
    for (group, name), d in expected_dims.items():
        assert idata[group][name].dims == d
        np.testing.assert_array_equal(arviz_compat.draws(idata, name, group), groups[group][name])
        assert idata[group].attrs["seed"] == 3
    assert arviz_compat.variables(idata) == {"z": expected_dims["posterior", "z"]} | {
        "scale": ("chain", "draw")
    }
    assert arviz_compat.coordinate(idata, "log_likelihood", "obs").tolist() == [4, 8, 15]
    assert arviz_compat.num_chains(idata) == 2
    assert "r_hat" in arviz_compat.summary(idata, ["z"])  # two chains: R-hat shown

    path = tmp_path / "posterior.nc"
    arviz_compat.save(idata, path)
    again = arviz_compat.load(path)
    path.unlink()  # read fully: nothing still needs the file
    assert isinstance(again, native)
    for (group, name), d in expected_dims.items():
        assert again[group][name].dims == d
        np.testing.assert_array_equal(again[group][name].values, groups[group][name])
    assert again["posterior"]["obs"].values.tolist() == [4, 8, 15]
    assert list(again["posterior"].attrs["steps"]) == [10, 20]
    assert again["posterior"].attrs["estimator"] == "analytic"


@pytest.fixture
def exports(binary_digits):
    """A VAE export (per-datapoint z) with its k̂, and an AutoNormal export (global latents)."""
    x = binary_digits[1][:12]
    pair = bernoulli_vae.make_pair(x_dim=64, z_dim=3, hidden=16)
    vae = ppl_vae.to_inference_data(*pair, x, num_samples=100, seed=0, obs=range(2, 10))
    khat = ppl_vae.vi_diagnostics(*pair, x, num_samples=100)["khat"].to_numpy()
    pyro.clear_param_store()
    data = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    guide = AutoNormal(global_model)
    ppl_vae.fit(global_model, guide, data, num_steps=200, batch_size=30, lr=0.05, seed=0)
    globals_ = ppl_vae.to_inference_data(global_model, guide, data, num_samples=400, seed=1)
    return vae, khat, globals_


def check_loo(elpd: float, p_loo: float, idata) -> None:
    """PSIS-LOO of a model with 4 global parameters: elpd = lppd − p_loo, p_loo ≈ 4."""
    log_lik = arviz_compat.draws(idata, "x", "log_likelihood").reshape(-1, 30)
    lppd = float(np.sum(logsumexp(log_lik, axis=0) - np.log(log_lik.shape[0])))
    assert elpd == pytest.approx(lppd - p_loo, abs=1e-4)  # float32 log-likelihoods
    assert 1.0 < p_loo < 8.0


@requires_arviz0
def test_arviz0_calls_on_the_exports(exports):
    vae, khat, globals_ = exports
    summary = az.summary(vae, var_names=["z"])
    assert list(summary.columns[:4]) == ["mean", "sd", "hdi_3%", "hdi_97%"] and len(summary) == 24
    az.plot_posterior(vae, var_names=["z"], coords={"obs": [2]})
    az.plot_forest(vae, var_names=["z"], coords={"obs": [2, 3]})
    az.plot_ppc(vae, num_pp_samples=20, random_seed=0)
    az.plot_khat(khat)
    loo = az.loo(globals_)
    check_loo(loo.elpd_loo, loo.p_loo, globals_)


@requires_arviz1
def test_arviz1_calls_on_the_exports(exports):
    import arviz_plots

    vae, khat, globals_ = exports
    summary = az.summary(vae, var_names=["z"], ci_kind="hdi", ci_prob=0.94)
    assert list(summary.columns[:4]) == ["mean", "sd", "hdi94_lb", "hdi94_ub"]
    assert len(summary) == 24
    arviz_plots.plot_dist(vae, var_names=["z"], coords={"obs": [2]})
    arviz_plots.plot_forest(vae, var_names=["z"], coords={"obs": [2, 3]})
    arviz_plots.plot_ppc_dist(vae, num_samples=20)
    arviz_compat.plot_khat(khat)  # arviz_plots.plot_khat takes a LOO result, not an array
    loo = az.loo(globals_, pointwise=True)
    check_loo(loo.elpd, loo.p, globals_)
    arviz_plots.plot_khat(loo)


ARVIZ1_BLOCK = re.compile(r"^```python arviz1\n(.*?)^```", re.S | re.M)


@pytest.mark.slow
@requires_arviz1
def test_the_arviz1_calls_in_the_docs_run(monkeypatch):
    # tests/test_docs.py runs the ```python blocks (the arviz 0.2x walk-through); the arviz
    # 1.x subsection of docs/diagnostics.md is fenced ```python arviz1 and runs here
    root = Path(__file__).resolve().parent.parent
    blocks = ARVIZ1_BLOCK.findall((root / "docs" / "diagnostics.md").read_text())
    assert blocks
    monkeypatch.chdir(root)
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block, "docs/diagnostics.md:arviz1", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["idata"], arviz_compat.InferenceData)


def test_elpd_data_is_the_generations_own_and_compare_reads_it():
    # hand-made pointwise values: totals, se, the difference and its se are exact sums
    rng = np.random.default_rng(0)
    better, worse = rng.normal(-5.0, 1.0, 50), rng.normal(-5.5, 1.0, 50)
    khat = np.full(50, 0.2)
    fits = {
        "better": arviz_compat.elpd_data(better, khat, p=2.0, num_samples=1000,
                                         extras={"iwae_i": better - 0.1, "method": "m"}),
        "worse": arviz_compat.elpd_data(worse, np.r_[khat[:-1], 0.9], p=np.nan,
                                        num_samples=1000),
    }
    fields = arviz_compat.elpd_fields(fits["better"])
    assert fields["elpd"] == pytest.approx(better.sum())
    assert fields["se"] == pytest.approx(np.sqrt(50 * np.var(better)))
    assert fields["p"] == 2.0 and fields["good_k"] == pytest.approx(1 - 1 / 3)
    assert not fields["warning"] and arviz_compat.elpd_fields(fits["worse"])["warning"]
    np.testing.assert_allclose(fits["better"]["iwae_i"], better - 0.1)
    assert fits["better"]["method"] == "m"
    table = arviz_compat.compare(fits)
    assert list(table.index) == ["better", "worse"] and list(table["rank"]) == [0, 1]
    difference = better - worse
    assert table.loc["worse", "elpd_diff"] == pytest.approx(difference.sum())
    assert table.loc["worse", "dse"] == pytest.approx(np.sqrt(50 * np.var(difference)))
    assert table["warning"].tolist() == [False, True]
    native = az.compare(fits)  # the generation's own compare takes them as they are
    assert list(native.index) == ["better", "worse"]
