"""ppl_vae.elpd against closed forms, and ArviZ's model comparison on its results.

- pPCA (local latents): log p(x_n) = log N(x_n | μ, W Wᵀ + σ² I) exactly; the pointwise ELPD
  is an importance-sampling estimate of it. Two pPCA fits (K = 2, the truth, and K = 1) at
  their closed-form maximum-likelihood parameters (Tipping & Bishop 1999) give the exact
  held-out difference that az.compare must rank and report.
- Bayesian linear regression with known noise (global latents): p(y_n | Y_{-n}) is Gaussian
  in closed form; with q the exact posterior the PSIS-LOO values must match it, and p_loo
  must be lppd − elpd of the closed forms.
- θ ~ N(0, 1), z_n ~ N(θ, 1), x_n ~ N(z_n, 1) (both kinds): x_n | θ ~ N(θ, 2), so the exact
  LOO densities are Gaussian; the nested estimate must find them with a guide whose local
  part is not the posterior.

The Monte Carlo spreads quoted below were measured with seeds 0-4 of each call.
"""

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.stats import norm

import ppl_vae
from models import linear_gaussian
from ppl_vae import arviz_compat
from ppl_vae.evaluation.predictive import (
    HELD_OUT,
    IMPORTANCE,
    IN_SAMPLE,
    LOO,
    LOO_NESTED,
    leave_one_out,
)
from ppl_vae.pair.traces import run_pair
from tests.conformance import regression
from tests.pairs import ppca_rows


def ppca_fit(x_train: torch.Tensor, z_dim: int, turn: float = 0.5):
    """pPCA with K = ``z_dim`` at its maximum-likelihood (W, μ, σ) on ``x_train`` (W's columns
    turned by ``turn`` radians in latent space, which leaves p(x) unchanged and makes the
    posterior precision non-diagonal); the guide the best diagonal Gaussian to p(z|x) with its
    sds widened 1.3 times, an importance proposal with light-tailed weights."""
    x = x_train.double()
    d = x.shape[1]
    centred = x - x.mean(0)
    eig, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])
    eig, vectors = eig.flip(0), vectors.flip(1)
    sigma2 = eig[z_dim:].mean()
    W = vectors[:, :z_dim] * (eig[:z_dim] - sigma2).sqrt()
    if z_dim == 2:
        c, s = math.cos(turn), math.sin(turn)
        W = W @ torch.tensor([[c, -s], [s, c]], dtype=W.dtype)
    pair = linear_gaussian.make_pair(x_dim=d, z_dim=z_dim)
    run_pair(*pair, x_train)
    store = pyro.get_param_store()
    with torch.no_grad():
        store["W"].unconstrained().copy_(W.float())
        store["mu"].unconstrained().copy_(x.mean(0).float())
        store["sigma"].unconstrained().copy_(sigma2.sqrt().log().float())
    linear_gaussian.set_guide_to_posterior()
    with torch.no_grad():
        store["s"].unconstrained().add_(math.log(1.3))
    return pair


def monte_carlo_se(log_w: np.ndarray) -> np.ndarray:
    """Delta-method standard error of log (1/S) Σ w_s per row, from log weights (S, N)."""
    w = np.exp(log_w - log_w.max(0))
    return w.std(0) / (w.mean(0) * math.sqrt(log_w.shape[0]))


def test_ppca_pointwise_elpd_is_the_exact_log_px_within_monte_carlo_error():
    x = ppca_rows(3, rows=260)
    pair = ppca_fit(x[:160], z_dim=2)
    held_out = x[160:]
    result = ppl_vae.elpd(*pair, held_out, num_samples=1000, held_out=True, seed=0)
    fields = arviz_compat.elpd_fields(result)
    exact = linear_gaussian.exact_log_likelihood(held_out).double().numpy()
    log_w = ppl_vae.importance_log_weights(*pair, held_out, 1000, seed=0).double().numpy()
    se = monte_carlo_se(log_w)  # the same draws (same seed)
    assert np.all(np.abs(fields["elpd_i"] - exact) < 4 * se)
    assert abs(fields["elpd"] - exact.sum()) < 4 * np.sqrt(np.sum(se**2))
    # the IWAE bound beside it: the raw-weight estimate, from the same draws
    np.testing.assert_allclose(result["iwae_i"], np.logaddexp.reduce(log_w, 0) - math.log(1000))
    # ArviZ's own fields: se from the pointwise values, k̂ fine, no LOO penalty to report
    assert fields["se"] == pytest.approx(math.sqrt(100 * np.var(fields["elpd_i"])))
    assert fields["n_samples"] == 1000 and fields["n_data_points"] == 100
    assert fields["pareto_k"].max() < fields["good_k"] and not fields["warning"]
    assert math.isnan(fields["p"])
    assert result["method"] == IMPORTANCE and result["evaluated_on"] == HELD_OUT


def test_az_compare_ranks_the_true_latent_dimension_by_the_exact_difference():
    x = ppca_rows(3, rows=360)
    exact, fits = {}, {}
    for z_dim in (2, 1):
        pyro.clear_param_store()
        pair = ppca_fit(x[:160], z_dim=z_dim)
        exact[z_dim] = linear_gaussian.exact_log_likelihood(x[160:]).double().numpy()
        fits[f"K={z_dim}"] = ppl_vae.elpd(*pair, x[160:], num_samples=1000, held_out=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # k̂ is fine: nothing to warn about
        table = az.compare(fits) if arviz_compat.GENERATION == 0 else arviz_compat.compare(fits)
    table = table.rename(columns={"elpd_loo": "elpd"})
    assert list(table.index) == ["K=2", "K=1"] and not table["warning"].any()
    difference = exact[2] - exact[1]
    true_dse = math.sqrt(difference.size * np.var(difference))
    # the estimated difference: the exact one within Monte Carlo error (spread over seeds
    # 0.05 nats on a difference of 160 nats), far inside its dse (8.4)
    assert table.loc["K=1", "elpd_diff"] == pytest.approx(difference.sum(), abs=0.5)
    assert table.loc["K=1", "dse"] == pytest.approx(true_dse, rel=0.02)
    assert difference.sum() > 4 * true_dse  # the data tell the two apart


def exact_loo_regression(x, y, sigma=regression.NOISE_SD):
    """log p(y_n | Y_{-n}) per row, and lppd = log p(y_n | Y) per row, both closed-form."""
    a, y = regression._design(x).numpy(), y.double().numpy()
    prior_precision = np.linalg.inv(regression._prior_cov(a.shape[1]).numpy())

    def predictive(keep, n):
        cov = np.linalg.inv(prior_precision + a[keep].T @ a[keep] / sigma**2)
        mean = cov @ a[keep].T @ y[keep] / sigma**2
        return norm.logpdf(y[n], a[n] @ mean, math.sqrt(sigma**2 + a[n] @ cov @ a[n]))

    rows = np.arange(len(y))
    loo = np.array([predictive(rows != n, n) for n in rows])
    lppd = np.array([predictive(rows == rows, n) for n in rows])
    return loo, lppd


def test_regression_psis_loo_with_the_exact_posterior_is_the_exact_loo():
    x, y = regression.make_data()
    loo, lppd = exact_loo_regression(x, y)
    guide = regression.make_exact_posterior_guide(x, y)
    result = ppl_vae.elpd(regression.model, guide, (x, y), num_samples=2000, held_out=False)
    fields = arviz_compat.elpd_fields(result)
    # spread over seeds: 0.06 in the total, under 0.06 per row
    assert np.abs(fields["elpd_i"] - loo).max() < 0.1
    assert fields["elpd"] == pytest.approx(loo.sum(), abs=0.3)
    assert fields["p"] == pytest.approx(lppd.sum() - loo.sum(), abs=0.3)  # about 4.4
    assert fields["pareto_k"].max() < 0.5 and not fields["warning"]
    assert result["method"] == LOO and result["evaluated_on"] == IN_SAMPLE
    assert result["global_sites"] == ["w", "b"]


def test_regression_with_a_badly_wrong_guide_is_flagged():
    x, y = regression.make_data()
    mean, cov = regression.exact_posterior(x, y)
    chol = torch.linalg.cholesky(cov[:3, :3]).float()
    loc, b_sd = (mean[:3] + 3 * cov.diagonal()[:3].sqrt()).float(), float(cov[3, 3].sqrt())

    def narrow(x, y=None, sigma=regression.NOISE_SD):  # 3 sd off, 0.3 of the posterior sd
        pyro.sample("w", dist.MultivariateNormal(loc, scale_tril=0.3 * chol))
        pyro.sample("b", dist.Normal(float(mean[3]), 0.3 * b_sd))

    with pytest.warns(UserWarning, match=r"k̂ > 0.70 at 170 of 170 rows"):
        result = ppl_vae.elpd(regression.model, narrow, (x, y), num_samples=2000,
                              held_out=False)
    fields = arviz_compat.elpd_fields(result)
    assert fields["warning"] and np.median(fields["pareto_k"]) > 1


def test_nested_estimate_with_global_and_local_latents_is_the_exact_loo():
    n = 20
    x = 1.5 * torch.randn(n, generator=torch.Generator().manual_seed(0)) + 0.7

    def model(x):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(theta, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    precision = 1 + n / 2  # q(θ) the exact posterior; q(z_n | x_n, θ) not the posterior
    mean = float(x.sum()) / 2 / precision

    def guide(x):
        theta = pyro.sample("theta", dist.Normal(mean, precision**-0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.6 * x + 0.4 * theta, 0.8))

    xs = x.double().numpy()
    rest = 1 + (n - 1) / 2  # the posterior precision of θ without row n
    exact = norm.logpdf(xs, (xs.sum() - xs) / 2 / rest, np.sqrt(2 + 1 / rest))
    result = ppl_vae.elpd(model, guide, x, num_samples=4000, held_out=False)
    fields = arviz_compat.elpd_fields(result)
    # spread over seeds: 0.04 in the total, under 0.05 per row
    assert np.abs(fields["elpd_i"] - exact).max() < 0.1
    assert fields["elpd"] == pytest.approx(exact.sum(), abs=0.15)
    assert result["method"] == LOO_NESTED and math.isnan(fields["p"])


def test_leave_one_out_of_exact_weights_is_the_ratio_of_sums():
    # raw PSIS-free check of the estimator on fixed weights: Σ r / Σ (r / w_n)
    rng = np.random.default_rng(0)
    local = rng.normal(size=(400, 3))
    joint = local.sum(1) + rng.normal(size=400)
    values = leave_one_out(local, joint, nested=False)
    r = np.exp(joint)
    expected = np.log(r.sum() / (r[:, None] / np.exp(local)).sum(0))
    np.testing.assert_allclose(values.raw, expected)


def test_held_out_must_be_said():
    pair = ppca_fit(ppca_rows(3, rows=40), z_dim=2)
    with pytest.raises(ppl_vae.PplVaeError, match="held_out must be True"):
        ppl_vae.elpd(*pair, ppca_rows(3, rows=40), held_out="yes")
    with pytest.raises(TypeError, match="held_out"):
        ppl_vae.elpd(*pair, ppca_rows(3, rows=40))
