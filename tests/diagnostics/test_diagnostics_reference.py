"""ppl_vae.reference_posterior (NUTS with the decoder fixed) against the exact pPCA posterior,
and VI set side by side with it."""

import numpy as np
import pyro
import pytest
import torch

import ppl_vae
from models import linear_gaussian
from ppl_vae import arviz_compat
from tests.diagnostics.test_diagnostics import ppca_at
from tests.test_arviz_compat import native_forest

D, K, N = 5, 2, 12
ROWS = [0, 4, 9]


@pytest.fixture
def ppca():
    """pPCA with a non-orthogonal W (correlated posterior), σ = 0.6; guide at the best diagonal."""
    W = torch.randn(D, K, generator=torch.Generator().manual_seed(2))
    W[:, 1] += W[:, 0]  # overlapping columns: a strongly correlated posterior
    return ppca_at(W, 0.6, N, seed=2)


def test_nuts_reference_agrees_with_the_exact_posterior(ppca):
    pair, x = ppca
    S = 300
    ref = ppl_vae.reference_posterior(
        pair.model, x, num_samples=S, warmup_steps=150, num_chains=2, seed=0, obs=ROWS
    )
    z = ref.posterior["z"]
    assert z.dims == ("chain", "draw", "obs", "z_dim_0") and z.shape == (2, S, 3, K)
    assert ref.posterior["obs"].values.tolist() == ROWS
    mean, cov = linear_gaussian.exact_posterior(x[ROWS])
    sd = cov.diagonal().sqrt().numpy()
    draws = z.values.reshape(-1, 3, K)
    # NUTS ESS is at least ~1/3 of the 600 draws here: 4 SE ≈ 0.3 sd is a safe margin
    assert np.all(np.abs(draws.mean(0) - mean.numpy()) < 0.3 * sd)
    assert np.all(np.abs(draws.std(0) / sd - 1) < 0.2)
    # off-diagonal correlation, which the diagonal guide cannot have, NUTS recovers
    rho = cov[0, 1] / (sd[0] * sd[1])
    got = np.mean([np.corrcoef(draws[:, i, 0], draws[:, i, 1])[0, 1] for i in range(3)])
    assert abs(got - float(rho)) < 0.15 and abs(float(rho)) > 0.4
    summary = arviz_compat.summary(ref, var_names=["z"])
    assert (summary["r_hat"] < 1.05).all()  # two chains: R-hat is shown, and near 1
    # laid out as az.from_pyro does: NUTS's divergences per draw, and the observed rows
    assert ref.sample_stats["diverging"].dims == ("chain", "draw")
    assert ref.sample_stats["diverging"].shape == (2, S)
    assert ref.sample_stats["diverging"].values.mean() < 0.05  # a Gaussian posterior
    np.testing.assert_array_equal(ref.observed_data["x"].values, x[ROWS].numpy())
    assert ref.posterior.attrs["inference"] == "NUTS"


def test_vi_and_nuts_side_by_side(ppca):
    pair, x = ppca
    vi = ppl_vae.to_inference_data(*pair, x, num_samples=1000, seed=0, obs=ROWS)
    ref = ppl_vae.reference_posterior(pair.model, x, num_samples=300, warmup_steps=150, obs=ROWS)
    table = ppl_vae.compare_posteriors(vi, ref)
    assert list(table.columns) == [
        "mean_vi",
        "sd_vi",
        "mean_nuts",
        "sd_nuts",
        "z_score",
        "sd_ratio",
    ]
    assert table.index[0] == "z[obs=0, z_dim_0=0]" and len(table) == 3 * K
    # the diagonal guide has the exact means; its sds are 1/sqrt(diag precision) < marginal sd
    _, cov = linear_gaussian.exact_posterior(x[ROWS])
    M_diag = 1 / torch.linalg.inv(cov).diagonal()
    expected_ratio = (M_diag.sqrt() / cov.diagonal().sqrt()).numpy()
    assert (table["z_score"].abs() < 0.35).all()
    ratio = table["sd_ratio"].to_numpy().reshape(3, K)
    assert np.all(np.abs(ratio / expected_ratio - 1) < 0.2)
    axes = ppl_vae.arviz_compat.plot_density([vi, ref], ("VI", "NUTS"), ["z"], {"obs": [0]})
    assert axes.size == K
    native_forest({"VI": vi, "NUTS": ref}, var_names=["z"], coords={"obs": [0]})


def test_reference_refuses_untrained_parameters():
    pair = linear_gaussian.make_pair(x_dim=D, z_dim=K)
    with pytest.raises(ppl_vae.PairError, match="not in Pyro's param store"):
        ppl_vae.reference_posterior(pair.model, torch.randn(4, D), num_samples=5, warmup_steps=5)
    assert len(pyro.get_param_store().keys()) == 0  # nothing was left behind
