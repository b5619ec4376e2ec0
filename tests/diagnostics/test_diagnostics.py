"""ppl_vae.to_inference_data and ppl_vae.vi_diagnostics, checked against closed forms.

The truth is probabilistic PCA (models/linear_gaussian.py): with orthogonal columns of W the
diagonal guide can equal the exact posterior, so every importance weight equals p(x) and k̂
must say "good"; a guide that is too narrow must be flagged unreliable.
"""

import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure
from pyro.infer.autoguide import AutoNormal

import ppl_vae
from models import bernoulli_vae, linear_gaussian
from ppl_vae import arviz_compat
from ppl_vae.diagnostics.diagnostics import category
from ppl_vae.pair.traces import run_pair

D, K, N = 6, 2, 40


def ppca_at(W: torch.Tensor, sigma: float, rows: int, seed: int):
    """pPCA with decoder (W, σ), ``rows`` datapoints drawn from it, and the guide set to the
    best diagonal Gaussian to the exact posterior (exact when W's columns are orthogonal)."""
    x_dim, z_dim = W.shape
    pair = linear_gaussian.make_pair(x_dim=x_dim, z_dim=z_dim)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, z_dim, generator=generator)
    x = z @ W.T + sigma * torch.randn(rows, x_dim, generator=generator)
    run_pair(*pair, x)
    store = pyro.get_param_store()
    with torch.no_grad():
        store["W"].unconstrained().copy_(W)
        store["sigma"].unconstrained().copy_(torch.tensor(sigma).log())
    linear_gaussian.set_guide_to_posterior()
    return pair, x


def ppca(orthogonal: bool = True):
    """σ = 0.5 and W with orthogonal columns (scaled 2 and 1), or not."""
    W = torch.randn(D, K, generator=torch.Generator().manual_seed(1))
    if orthogonal:
        W = torch.linalg.qr(W)[0] * torch.tensor([2.0, 1.0])
    return ppca_at(W, 0.5, N, seed=1)


def scale_guide(factor: float) -> None:
    s = pyro.get_param_store()["s"].unconstrained()
    with torch.no_grad():
        s.add_(math.log(factor))


def test_exact_posterior_guide_is_good_and_weights_give_log_p_x():
    pair, x = ppca(orthogonal=True)
    table = ppl_vae.vi_diagnostics(*pair, x, num_samples=500, seed=0)
    assert len(table) == N
    # q = p(z|x): every log weight equals log p(x), so there is no tail: k̂ = -inf, "good"
    assert (table["khat"] < 0.5).all()
    assert np.isneginf(table["khat"]).all()
    assert (table["verdict"] == "good").all()
    exact = linear_gaussian.exact_log_likelihood(x).double().numpy()
    np.testing.assert_allclose(table["psis_log_likelihood"], exact, atol=1e-3)
    np.testing.assert_allclose(table["log_likelihood"], exact, atol=1e-3)
    np.testing.assert_allclose(table["ess"], 500, rtol=1e-4)
    assert "good at every datapoint" in table.attrs["verdict"]


def test_near_exact_guide_gets_a_fitted_small_khat():
    # W not orthogonal: the best diagonal q misses the posterior correlation a little, so the
    # weights vary and PSIS fits a real tail, which must still be light
    pair, x = ppca(orthogonal=False)
    table = ppl_vae.vi_diagnostics(*pair, x, num_samples=1000, seed=0)
    assert np.isfinite(table["khat"]).all()
    assert (table["khat"] < 0.5).all()
    exact = linear_gaussian.exact_log_likelihood(x).double().numpy()
    np.testing.assert_allclose(table["psis_log_likelihood"], exact, atol=0.02)
    assert ((table["ess"] > 1) & (table["ess"] < 1000)).all()


@pytest.mark.parametrize("factor", [0.3, 0.2])
def test_too_narrow_guide_is_flagged_unreliable(factor):
    pair, x = ppca(orthogonal=True)
    scale_guide(factor)
    table = ppl_vae.vi_diagnostics(*pair, x, num_samples=1000, seed=0)
    assert (table["khat"] > 0.7).mean() >= 0.75
    assert (table["ess"] < 200).mean() >= 0.75
    assert "unreliable" in table.attrs["verdict"]
    # a narrow q underestimates log p(x) on average; PSIS does not make it worse
    exact = linear_gaussian.exact_log_likelihood(x).double().numpy()
    assert (table["log_likelihood"] - exact).mean() < -0.1


def test_khat_categories_follow_yao_et_al():
    assert [category(k) for k in (-np.inf, 0.49, 0.5, 0.7, 0.71, np.nan)] == [
        "good",
        "good",
        "usable",
        "usable",
        "unreliable",
        "unreliable",
    ]


def test_same_seed_same_diagnostics():
    pair, x = ppca(orthogonal=False)
    first = ppl_vae.vi_diagnostics(*pair, x, num_samples=200, seed=3)
    second = ppl_vae.vi_diagnostics(*pair, x, num_samples=200, seed=3)
    np.testing.assert_array_equal(first["khat"], second["khat"])


def test_exported_draws_match_the_guide():
    pair, x = ppca(orthogonal=False)
    rows = [0, 5, 7]
    S = 4000
    idata = ppl_vae.to_inference_data(*pair, x, num_samples=S, seed=0, obs=rows)
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "obs", "z_dim_0")
    assert z.shape == (1, S, 3, K)
    assert idata.posterior["obs"].values.tolist() == rows
    store = pyro.get_param_store()
    A, b, s = (store[n].detach().double() for n in ("A", "b", "s"))
    mean = x[rows].double() @ A.T + b
    draws = z.values[0].astype(np.float64)
    se = s.numpy() / math.sqrt(S)
    assert np.all(np.abs(draws.mean(0) - mean.numpy()) < 4 * se)
    assert np.all(np.abs(draws.std(0) - s.numpy()) < 4 * s.numpy() / math.sqrt(2 * S))
    # the weights and likelihood stored are those of the drawn z (closed forms)
    W, mu, sigma = (store[n].detach().double() for n in ("W", "mu", "sigma"))
    zt = torch.as_tensor(draws).double()
    log_lik = dist.Normal(zt @ W.T + mu, sigma).log_prob(x[rows].double()).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], log_lik.numpy(), atol=1e-3)
    log_w = log_lik + dist.Normal(0.0, 1.0).log_prob(zt).sum(-1)
    log_w = log_w - dist.Normal(mean, s).log_prob(zt).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0], log_w, atol=1e-3)


def test_vae_export_groups_dims_and_arviz_calls(binary_digits, tmp_path):
    x = binary_digits[1][:12]
    pair = bernoulli_vae.make_pair(x_dim=64, z_dim=3, hidden=16)
    idata = ppl_vae.to_inference_data(*pair, x, num_samples=100, seed=0, obs=range(2, 10))
    assert set(arviz_compat.groups(idata)) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "sample_stats",
        "observed_data",
    }
    assert idata.posterior["z"].dims == ("chain", "draw", "obs", "z_dim_0")
    assert idata.posterior["z"].shape == (1, 100, 8, 3)
    pp = idata.posterior_predictive["x"]
    assert pp.dims == ("chain", "draw", "obs", "x_dim_0") and pp.shape == (1, 100, 8, 64)
    assert set(np.unique(pp.values)) <= {0.0, 1.0}
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.sample_stats["log_weight"].shape == (1, 100, 8)
    np.testing.assert_array_equal(idata.observed_data["x"].values, x[2:10].numpy())
    assert idata.posterior.attrs["seed"] == 0 and "pyro_ppl_version" in idata.posterior.attrs
    # replicated data follow p(x|z) of the drawn z: pixel means match the decoder's
    decoder = pair.modules[1]
    with torch.no_grad():
        probs = torch.sigmoid(decoder(torch.as_tensor(idata.posterior["z"].values[0]))).numpy()
    assert np.abs(pp.values[0].mean(0) - probs.mean(0)).max() < 4 * 0.5 / math.sqrt(100)

    summary = az.summary(idata, var_names=["z"])  # the same call under arviz 0.2x and 1.x
    assert len(summary) == 8 * 3 and "ess_bulk" in summary
    assert "r_hat" not in arviz_compat.summary(idata)  # one chain: no R-hat
    khat = ppl_vae.vi_diagnostics(*pair, x, num_samples=100)["khat"].to_numpy()
    figures = [
        arviz_compat.plot_posterior(idata, ["z"], {"obs": [2]}),
        arviz_compat.plot_ppc(idata, num_pp_samples=20),
        arviz_compat.plot_khat(khat),
    ]
    assert all(isinstance(f, Figure) and f.axes for f in figures)
    # each generation's own plotting calls: tests/test_arviz_compat.py

    path = tmp_path / "posterior.nc"
    arviz_compat.save(idata, path)
    again = az.from_netcdf(path)  # arviz 1.x: xarray.open_datatree under the same name
    assert set(arviz_compat.groups(again)) == set(arviz_compat.groups(idata))
    for group in arviz_compat.groups(idata):
        for name, var in idata[group].data_vars.items():
            np.testing.assert_array_equal(again[group][name].values, var.values)
            assert again[group][name].dims == var.dims
    assert again.posterior.attrs["seed"] == 0


def global_model(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(x.shape[1]), 10.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale[..., None]).to_event(1), obs=x)


def test_autonormal_global_latents_keep_their_shapes():
    x = torch.randn(30, 3) * 2.0 + torch.tensor([1.0, -1.0, 0.5])
    guide = AutoNormal(global_model)
    ppl_vae.fit(global_model, guide, x, num_steps=300, batch_size=30, lr=0.05, seed=0)
    S = 2000
    idata = ppl_vae.to_inference_data(global_model, guide, x, num_samples=S, seed=1)
    assert idata.posterior["loc"].dims == ("chain", "draw", "loc_dim_0")
    assert idata.posterior["loc"].shape == (1, S, 3)
    assert idata.posterior["scale"].dims == ("chain", "draw")  # no padded (S, 1)
    # draws follow the guide: log(scale) ~ N(locs.scale, scales.scale)
    m, s = float(guide.locs.scale.detach()), float(guide.scales.scale.detach())
    log_scale = np.log(idata.posterior["scale"].values[0])
    assert abs(log_scale.mean() - m) < 4 * s / math.sqrt(S)
    assert idata.log_likelihood["x"].shape == (1, S, 30)
    # PSIS-LOO (meaningful here: the latents are global) under each generation's own call:
    # tests/test_arviz_compat.py


def test_independent_fits_become_chains_and_get_r_hat():
    x = torch.randn(50, 4)
    pair = linear_gaussian.make_pair(x_dim=4, z_dim=1)
    fits = [
        ppl_vae.fit(*pair, x, num_steps=150, batch_size=50, lr=0.05, seed=seed) for seed in (0, 1)
    ]
    before = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    idata = ppl_vae.to_inference_data(*pair, x, num_samples=200, seed=5, fits=fits)
    after = dict(pyro.get_param_store().named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # the store is put back
    assert idata.posterior["z"].shape == (2, 200, 50, 1)
    assert list(idata.posterior.attrs["fit_seeds"]) == [0, 1]
    # chain 1 is exactly what fit 1's parameters give with seed 5 + 1
    ppl_vae.utils.params.restore(fits[1].params)
    alone = ppl_vae.to_inference_data(*pair, x, num_samples=200, seed=6)
    np.testing.assert_array_equal(idata.posterior["z"].values[1], alone.posterior["z"].values[0])
    assert "r_hat" in arviz_compat.summary(idata, var_names=["z"])


def test_obs_must_name_existing_distinct_rows():
    pair, x = ppca()
    with pytest.raises(ppl_vae.DataError, match="outside"):
        ppl_vae.to_inference_data(*pair, x, num_samples=5, obs=[0, N])
    with pytest.raises(ppl_vae.DataError, match="repeats"):
        ppl_vae.to_inference_data(*pair, x, num_samples=5, obs=[1, 1])


def test_sample_counts_must_be_positive():
    pair, x = ppca()
    with pytest.raises(ppl_vae.PplVaeError, match="num_samples must be a positive integer"):
        ppl_vae.to_inference_data(*pair, x, num_samples=0)
    with pytest.raises(ppl_vae.PplVaeError, match="num_samples must be a positive integer"):
        ppl_vae.vi_diagnostics(*pair, x, num_samples=0)
