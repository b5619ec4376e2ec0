r"""The optional "iwae" estimator row: Pyro's RenyiELBO(alpha=0), against closed forms.

On pPCA (``models/linear_gaussian``) log p(x) and the ELBO are closed-form, and the IWAE bound
(Burda et al. 2016) must sit between them, rising with K: ELBO = L_1 ≤ E L_K ≤ log p(x); with the
guide at the exact posterior every importance weight is p(x), so every draw equals log p(x).
"""

import math

import pyro
import pytest
import torch

import ppl_vae
from ppl_vae.estimators.estimators import IWAE_ELBO
from ppl_vae.evaluation.variance import estimate_draws, gradient_draws, gradient_variance
from ppl_vae.utils.errors import EstimatorError


def ppca(x_dim: int = 6, z_dim: int = 2):
    from models import linear_gaussian

    pair = linear_gaussian.make_pair(x_dim=x_dim, z_dim=z_dim)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, x_dim, generator=generator) * 1.5
    pair.model(x)  # create the parameters: W random, guide q(z|x) = N(0, I)
    pair.guide(x)
    return pair, x, linear_gaussian


def test_iwae_bound_lies_between_the_elbo_and_log_px_and_tightens_with_k():
    pair, x, lg = ppca()
    exact = float(lg.exact_log_likelihood(x).mean())
    elbo = exact - float(lg.kl_to_posterior(x).mean())  # the identity, closed form
    means = {}
    for k in (1, 5, 50):
        if k == 1:
            draws = estimate_draws(*pair, x, ("sampled",), 2000, seed=0)
        else:
            draws = estimate_draws(*pair, x, ("iwae",), 2000, iwae_particles=k, seed=0)
            assert draws["kl"].isna().all()  # no separate KL term inside the bound
        se = float(draws["elbo"].std()) / math.sqrt(len(draws))
        means[k] = (float(draws["elbo"].mean()), se)
    assert abs(means[1][0] - elbo) < 4 * means[1][1]  # K = 1 is the ELBO, unbiased
    (m5, se5), (m50, se50) = means[5], means[50]
    assert elbo + 4 * se5 < m5 < m50 - 4 * math.hypot(se5, se50)
    assert m50 < exact + 4 * se50
    assert exact - m50 < 0.5 * (exact - elbo)  # K = 50 closes most of the gap


def test_every_iwae_draw_is_log_px_at_the_exact_posterior():
    pair, x, lg = ppca(x_dim=4, z_dim=2)
    with torch.no_grad():  # W with orthogonal columns: the diagonal guide can be exact
        pyro.get_param_store()["W"].copy_(torch.tensor([[1.0, 0], [0, 2.0], [0, 0], [0, 0]]))
    lg.set_guide_to_posterior()
    draws = estimate_draws(*pair, x, ("iwae",), 50, iwae_particles=7, seed=2)
    exact = float(lg.exact_log_likelihood(x).mean())
    assert draws["elbo"].to_numpy() == pytest.approx(exact, abs=1e-4)


def test_iwae_value_and_gradient_are_pyros_renyi_elbo():
    """One draw of K particles under a seed is what RenyiELBO(alpha=0) computes."""
    from models.bernoulli_vae import make_pair

    model, guide = make_pair(x_dim=6, z_dim=2, hidden=5)
    x = (torch.rand(4, 6) > 0.5).float()
    k = 6
    ours = gradient_draws(model, guide, x, ("iwae",), 1, iwae_particles=k, seed=3)["iwae"]
    value = estimate_draws(model, guide, x, ("iwae",), 1, iwae_particles=k, seed=3)
    elbo = IWAE_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(3)
    with pyro.poutine.trace(param_only=True) as capture:
        loss = elbo.loss_and_grads(model, guide, x)
    assert float(value["elbo"].iloc[0]) * len(x) == pytest.approx(-loss, rel=1e-5)
    for name, site in capture.trace.nodes.items():
        p = site["value"].unconstrained()
        torch.testing.assert_close(ours[name][0], p.grad)


def test_fit_trains_with_iwae_and_refuses_one_particle():
    pair, x, lg = ppca()
    with pytest.raises(EstimatorError, match="num_particles=K >= 2"):
        ppl_vae.fit(*pair, x, estimator="iwae", num_steps=2, batch_size=10)
    pyro.clear_param_store()
    pair, x, lg = ppca()
    start = float(lg.exact_log_likelihood(x).mean())
    result = ppl_vae.fit(
        *pair, x, estimator="iwae", num_particles=5, num_steps=300, batch_size=40, lr=0.02
    )
    # trained: the bound and log p(x) rose, and the bound stays below log p(x)
    end = float(lg.exact_log_likelihood(x).mean())
    assert end > start + 0.5
    assert result.final_elbo < end + 0.1
    assert list(result.sites["kl"]) == ["sampled"]


def test_iwae_needs_every_latent_in_the_data_plate_and_k_of_two():
    def model(x):
        mean = pyro.sample("mean", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(mean, 1.0), obs=x)

    guide = pyro.infer.autoguide.AutoNormal(model)
    x = torch.randn(5)
    with pytest.raises(EstimatorError, match=r"\['mean'\] lie outside the data plate"):
        gradient_variance(model, guide, x, ("sampled", "iwae"), num_draws=3)
    pair, x, _ = ppca()
    with pytest.raises(EstimatorError, match="iwae_particles must be an integer >= 2"):
        estimate_draws(*pair, x, ("iwae",), 3, iwae_particles=1)
