"""The seed's identity and the two KL estimators, checked against closed forms.

log p(x) − KL(q(z|x) ‖ p(z|x)) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))   (= ELBO)

On probabilistic PCA (models/linear_gaussian.py) both sides are known in closed form for any
encoder, so ``evaluate`` must reproduce the left side from samples of the right.
"""

import pyro
import pytest
import torch

import ppl_vae
from models import linear_gaussian as lg
from ppl_vae.estimators.particles import particle_terms
from ppl_vae.pair.traces import run_pair


@pytest.fixture
def untrained_ppca(digits):
    """pPCA on 40 digits with arbitrary (random, untrained) decoder and encoder parameters."""
    x = digits[0][:40]
    model, guide = lg.make_pair(x_dim=64, z_dim=3)
    run_pair(model, guide, x)  # create the parameters
    store = pyro.get_param_store()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("W", "mu", "A", "b"):
            value = store[name].unconstrained()
            value.copy_(0.3 * torch.randn(value.shape, generator=g))
        store["sigma"].unconstrained().fill_(torch.tensor(0.4).log())
        store["s"].unconstrained().copy_(torch.tensor([0.2, 0.5, 0.9]).log())
    return model, guide, x


@pytest.mark.parametrize("estimator", ["analytic", "sampled"])
def test_elbo_equals_log_evidence_minus_posterior_kl(untrained_ppca, estimator):
    model, guide, x = untrained_ppca
    terms = ppl_vae.evaluate(model, guide, x, num_particles=4000, estimator=estimator, seed=3)
    truth = (lg.exact_log_likelihood(x) - lg.kl_to_posterior(x)).double().numpy()
    error = terms["elbo"].to_numpy() - truth
    assert (abs(error) < 4 * terms["elbo_se"].to_numpy() + 1e-3).all(), error
    # reconstruction − kl = elbo, exactly, per datapoint
    assert (terms["reconstruction"] - terms["kl"] - terms["elbo"]).abs().max() < 1e-9
    assert (terms["kl"] - terms["kl[z]"]).abs().max() == 0
    assert terms.attrs["kl_method"] == {
        "z": "closed-form" if estimator == "analytic" else "sampled"
    }


def test_iwae_is_between_the_elbo_and_log_evidence(untrained_ppca):
    """ELBO ≤ IWAE_K ≤ log p(x) (in expectation; Burda et al. 2016, Thm 1) for a guide near the
    posterior, where the weights are light-tailed enough for it to hold draw by draw."""
    model, guide, x = untrained_ppca
    lg.set_guide_to_posterior()
    with torch.no_grad():  # perturb: shift the mean, widen the scales
        pyro.param("b").unconstrained().add_(0.05)
        pyro.param("s").unconstrained().add_(torch.tensor(1.2).log())
    exact = lg.exact_log_likelihood(x).double().numpy()
    elbo = ppl_vae.evaluate(model, guide, x, num_particles=2000, seed=0)["elbo"].to_numpy()
    iwae = ppl_vae.log_likelihood(model, guide, x, num_samples=2000, seed=0).to_numpy()
    log_w = ppl_vae.importance_log_weights(model, guide, x, num_samples=2000, seed=0).double()
    w = (log_w - log_w.max(0).values).exp()
    se = (w / w.mean(0)).std(0).numpy() / 2000**0.5  # delta method: sd of log mean(w)
    assert (elbo < iwae).all() and (iwae < exact + 4 * se).all()
    assert (exact - iwae).mean() < 0.2 * (exact - elbo).mean()


def test_sampled_kl_is_unbiased_for_the_closed_form(untrained_ppca):
    """mean_k [log q(z_k|x) − log p(z_k)] → KL(q‖p) for Normal q and Normal p."""
    model, guide, x = untrained_ppca
    layout = run_pair(model, guide, x)
    num = 20000
    with torch.no_grad(), ppl_vae.utils.rng.seeded(5):
        terms = particle_terms(model, guide, x, num, layout)
    sampled = terms.kl("z", closed_form=False).double()
    closed = terms.closed_kl["z"][0].double()
    # the closed form for a diagonal Normal against N(0, I), written out
    loc, scale = x @ pyro.param("A").detach().T + pyro.param("b").detach(), pyro.param("s")
    by_hand = 0.5 * (scale.detach() ** 2 + loc**2 - 1 - 2 * scale.detach().log()).sum(-1)
    assert torch.allclose(closed, by_hand.double(), rtol=1e-5, atol=1e-5)
    se = sampled.std(0) / num**0.5
    z = (sampled.mean(0) - closed) / se
    assert z.abs().max() < 4.5, z
    assert abs(z.mean()) * len(z) ** 0.5 < 4  # no systematic bias across datapoints


def test_at_the_exact_posterior_only_the_sampled_kl_has_zero_variance(digits):
    """With WᵀW diagonal the diagonal guide can equal p(z|x). Then log p(x,z) − log q(z|x) =
    log p(x) for every z, so the sampled-KL estimate is exact with zero variance; the analytic
    estimate is exact only in expectation (its reconstruction term is still sampled)."""
    x = digits[0][:20]
    model, guide = lg.make_pair(x_dim=64, z_dim=2)
    run_pair(model, guide, x)
    q, _ = torch.linalg.qr(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        pyro.param("W").unconstrained().copy_(q * torch.tensor([2.0, 0.7]))
    lg.set_guide_to_posterior()
    assert lg.kl_to_posterior(x).abs().max() < 1e-4
    exact = lg.exact_log_likelihood(x).double().numpy()
    sampled = ppl_vae.evaluate(model, guide, x, num_particles=50, estimator="sampled", seed=0)
    assert abs(sampled["elbo"] - exact).max() < 1e-3
    assert sampled["elbo_se"].max() < 1e-4
    analytic = ppl_vae.evaluate(model, guide, x, num_particles=2000, seed=0)
    assert analytic["elbo_se"].min() > 1e-3
    assert (abs(analytic["elbo"] - exact) < 4 * analytic["elbo_se"]).all()
