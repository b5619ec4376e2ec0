"""ArviZ's comparison and predictive plots on ppl_vae's results: az.compare of two digits VAEs
by ppl_vae.elpd, the export's log_likelihood group and its warning, and the LOO-PIT and PPC
of exports whose rows are vectors (pixels, a ``to_event`` likelihood).

The LOO-PIT weights are checked against ArviZ's own: for Bayesian regression with the exact
posterior as guide, draws need no correction, so the weights must be −log p(y_n | θ) up to
the constant log p(Y).
"""

import warnings

import arviz as az
import matplotlib.image
import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from scipy.special import logsumexp

import ppl_vae
from models import bernoulli_vae
from ppl_vae import arviz_compat
from ppl_vae.diagnostics.inference_data import LogLikelihoodWarning
from ppl_vae.evaluation.predictive import loo_pit_log_weights
from tests.conformance import regression
from tests.conftest import requires_arviz0
from tests.diagnostics.test_diagnostics import global_model


@pytest.fixture(scope="module")
def vaes(binary_digits):
    """Digits VAEs with z = 8 and z = 2 (60 steps: early, while q is a fine proposal), their
    ELPD (S = 1000, the IWAE bound beside it) on 150 test rows, and an export of the first by
    12 rows."""
    train, test = binary_digits[0], binary_digits[1][:150]
    fits, iwae, export = {}, {}, None
    for z_dim in (8, 2):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        pair = bernoulli_vae.make_pair(x_dim=64, z_dim=z_dim, hidden=64)
        ppl_vae.fit(*pair, train, estimator="analytic", num_steps=60, batch_size=128, lr=3e-3,
                    seed=0)
        fits[f"z={z_dim}"] = ppl_vae.elpd(*pair, test, num_samples=1000, held_out=True)
        iwae[f"z={z_dim}"] = float(np.sum(fits[f"z={z_dim}"]["iwae_i"]))  # the same draws
        if export is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LogLikelihoodWarning)
                export = ppl_vae.to_inference_data(*pair, test, num_samples=200, obs=range(12))
    pyro.clear_param_store()
    return fits, iwae, export


def test_az_compare_of_two_vaes_ranks_them_as_the_held_out_iwae(vaes):
    fits, iwae, _ = vaes
    for fit in fits.values():  # k̂ is fine, so nothing is flagged
        fields = arviz_compat.elpd_fields(fit)
        assert fields["pareto_k"].max() < fields["good_k"] and not fields["warning"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        table = arviz_compat.compare(fits)
    assert list(table.index) == sorted(iwae, key=iwae.get, reverse=True)
    assert not table["warning"].any()
    worse = table.index[1]
    assert table.loc[worse, "elpd_diff"] > 2 * table.loc[worse, "dse"]
    # the PSIS estimate and the IWAE bound of the same draws agree closely, and the IWAE is
    # what ppl_vae.log_likelihood computes from them
    for name, fit in fits.items():
        assert arviz_compat.elpd_fields(fit)["elpd"] == pytest.approx(iwae[name], abs=2.0)


@requires_arviz0
def test_arviz0_comparison_plots_take_the_elpd(vaes, tmp_path):
    fits, _, _ = vaes
    az.plot_compare(az.compare(fits))
    az.plot_elpd(fits)
    axes = az.plot_khat(fits["z=8"])
    assert_drawn(np.ravel(axes)[0].figure, tmp_path / "khat.png")


def assert_drawn(figure, path) -> None:
    """The figure is written to ``path`` and is not blank: a fair share of its pixels is not
    the background colour."""
    figure.savefig(path, dpi=60)
    pixels = matplotlib.image.imread(path)[..., :3]
    background = pixels[0, 0]
    assert np.mean(np.abs(pixels - background).sum(-1) > 0.1) > 0.01


def test_the_export_says_what_its_log_likelihood_is(binary_digits):
    pair = bernoulli_vae.make_pair(x_dim=64, z_dim=2, hidden=8)
    with pytest.warns(LogLikelihoodWarning, match=r"ppl_vae.elpd\(model, guide, data"):
        idata = ppl_vae.to_inference_data(*pair, binary_digits[1][:4], num_samples=10)
    meaning = idata["log_likelihood"].attrs["meaning"]
    assert "harmonic-mean" in meaning and "ppl_vae.plot_loo_pit" in meaning
    assert "meaning" not in idata["posterior"].attrs
    pyro.clear_param_store()
    guide = AutoNormal(global_model)
    data = torch.randn(8, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LogLikelihoodWarning)  # global latents: no warning
        idata = ppl_vae.to_inference_data(global_model, guide, data, num_samples=10)
    assert arviz_compat.draws(idata, "global_log_weight", "sample_stats").shape == (1, 10)


def test_ppc_of_pixel_rows_is_drawn_and_their_loo_pit_refused_with_the_calls_to_use(
    vaes, tmp_path
):
    _, _, export = vaes
    assert_drawn(arviz_compat.plot_ppc(export, num_pp_samples=20), tmp_path / "ppc.png")
    with pytest.raises(ppl_vae.PplVaeError, match=r"plot_ppc\(idata\).*ppl_vae.elpd\("):
        ppl_vae.plot_loo_pit(export)
    if arviz_compat.GENERATION == 0:
        az.plot_ppc(export, num_pp_samples=20, random_seed=0)
        with pytest.raises(ValueError, match="same shape"):  # ArviZ's own refusal
            az.plot_loo_pit(export, y="x")


def test_loo_pit_of_vector_rows_with_global_latents_is_drawn(tmp_path):
    data = torch.randn(30, 3, generator=torch.Generator().manual_seed(0)) + 1.0
    guide = AutoNormal(global_model)
    ppl_vae.fit(global_model, guide, data, num_steps=200, batch_size=30, lr=0.05, seed=0)
    idata = ppl_vae.to_inference_data(global_model, guide, data, num_samples=400, seed=1)
    assert_drawn(ppl_vae.plot_loo_pit(idata), tmp_path / "loo_pit.png")
    with pytest.raises(ppl_vae.PplVaeError, match="not an observed site"):
        ppl_vae.plot_loo_pit(idata, "loc")
    if arviz_compat.GENERATION == 0:
        with pytest.raises(ValueError, match="same shape"):  # what the weights are for
            az.plot_loo_pit(idata, y="x")


def pit(idata, var: str) -> np.ndarray:
    """PIT of each observed element under the export's draws reweighted by the leave-one-out
    log weights (unsmoothed, self-normalized), shape (rows, elements)."""
    weights = loo_pit_log_weights(idata)
    weights = np.exp(weights - logsumexp(weights, axis=1, keepdims=True))  # (rows, S)
    draws = arviz_compat.draws(idata, var, "posterior_predictive")
    draws = draws.reshape(-1, *draws.shape[2:])  # (S, rows, ...)
    observed = arviz_compat.draws(idata, var, "observed_data")
    below = (draws <= observed).reshape(draws.shape[0], draws.shape[1], -1)
    return np.einsum("ns,snd->nd", weights, below)


def test_loo_pit_weights_with_the_exact_posterior_are_arviz_own():
    x, y = regression.make_data()
    guide = regression.make_exact_posterior_guide(x, y)
    idata = ppl_vae.to_inference_data(regression.model, guide, (x, y), num_samples=1000)
    ours = loo_pit_log_weights(idata)
    theirs = -arviz_compat.draws(idata, "obs", "log_likelihood").reshape(-1, len(y)).T
    # the same up to one constant per row (log p(Y), exact but for float32 draws)
    difference = ours - theirs
    assert np.abs(difference - difference.mean(1, keepdims=True)).max() < 0.05
    assert np.abs(difference.mean(1) - regression.exact_log_evidence(x, y)).max() < 0.05
    # and the PIT they give is ArviZ's for posterior draws: uniform-ish, every value in [0, 1]
    values = pit(idata, "obs")
    assert values.shape == (len(y), 1) and 0 <= values.min() and values.max() <= 1
    assert abs(values.mean() - 0.5) < 0.1
