"""The amortization and approximation gaps against closed forms on pPCA.

With posterior precision Λ = (WᵀW + σ²I)/σ² and posterior mean m(x), the best diagonal
Gaussian q* has mean m(x) and precisions diag Λ, so

- approximation gap = KL(q* ‖ p(z|x)) = ½ (Σ log Λ_ii − log det Λ), the same for every x;
- amortization gap = KL(q ‖ p(z|x)) − KL(q* ‖ p(z|x)), which is KL(q ‖ q*) when Λ is
  diagonal (then q* = p(z|x)).
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from models import bernoulli_vae, linear_gaussian
from ppl_vae import PairError, PplVaeError, inference_gap
from tests.diagnostics.test_calibration import global_pair
from tests.pairs import delta_pair

X_DIM, Z_DIM = 5, 2


def ppca(correlated: bool):
    """pPCA with W's columns correlated (a non-diagonal Λ) or orthogonal, and an untrained
    linear encoder q(z|x) = N(Ax + b, diag s²) with small random A."""
    pair = linear_gaussian.make_pair(x_dim=X_DIM, z_dim=Z_DIM)
    x = 2 * torch.randn(40, X_DIM)
    pair.model(x), pair.guide(x)
    store = pyro.get_param_store()
    with torch.no_grad():
        w = torch.randn(X_DIM)
        if correlated:
            W = torch.stack([w, 0.9 * w + 0.3 * torch.randn(X_DIM)], 1)
        else:
            W = torch.linalg.qr(torch.randn(X_DIM, Z_DIM))[0] * torch.tensor([2.0, 0.7])
        store["W"].copy_(W)
        store["mu"].copy_(torch.randn(X_DIM))
        store["sigma"].unconstrained().copy_(torch.tensor(0.8).log())
        store["A"].copy_(0.1 * torch.randn(Z_DIM, X_DIM))
        store["s"].unconstrained().copy_(torch.tensor([0.5, 1.5]).log())
    return pair, x


def truths(x):
    W, _, sigma = linear_gaussian._decoder()
    precision = (W.T @ W + sigma**2 * torch.eye(Z_DIM)) / sigma**2
    approximation = 0.5 * (torch.diagonal(precision).log().sum() - torch.logdet(precision))
    amortization = linear_gaussian.kl_to_posterior(x) - approximation
    return float(approximation), amortization.numpy()


def within_error(estimate, truth, se, slack=0.0):
    """Per row within 4.5 standard errors, and the mean within 4 of the mean's."""
    z = (estimate - truth) / se
    assert np.abs(z).max() < 4.5, z
    mean_se = np.sqrt((se**2).sum()) / len(se)
    assert abs(np.mean(estimate - truth)) < 4 * mean_se + slack


@pytest.fixture(scope="module")
def correlated():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pair, x = ppca(correlated=True)
    gap = inference_gap(*pair, x, num_steps=400, exact_log_likelihood=pair.exact_log_likelihood)
    return x, gap, truths(x), {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_approximation_gap_is_kl_of_the_best_diagonal_gaussian(correlated):
    x, gap, (approximation, _), _ = correlated
    assert approximation > 0.3  # a correlated posterior: the diagonal family falls short
    assert not gap["still_improving"].any()
    within_error(gap["approximation_gap"].to_numpy(), approximation,
                 gap["approximation_gap_se"].to_numpy(), slack=0.005)


def test_amortization_gap_of_an_untrained_encoder(correlated):
    x, gap, (_, amortization), _ = correlated
    assert amortization.min() > 1
    within_error(gap["amortization_gap"].to_numpy(), amortization,
                 gap["amortization_gap_se"].to_numpy(), slack=0.005)


def test_gaps_sum_to_log_likelihood_minus_elbo(correlated):
    x, gap, _, params = correlated
    np.testing.assert_allclose(gap["amortization_gap"] + gap["approximation_gap"],
                               gap["total_gap"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(gap["log_likelihood"] - gap["elbo"], gap["total_gap"],
                               rtol=0, atol=1e-9)
    for name, value in params.items():
        pyro.get_param_store()[name] = value
    exact = linear_gaussian.exact_log_likelihood(x).numpy()
    np.testing.assert_allclose(gap["log_likelihood"], exact, rtol=1e-6)
    # the total gap is KL(q ‖ p(z|x)), the model's own closed form
    within_error(gap["total_gap"].to_numpy(), linear_gaussian.kl_to_posterior(x).numpy(),
                 gap["total_gap_se"].to_numpy())
    assert gap.attrs["log_likelihood"] == "exact"


def test_orthogonal_pca_amortization_gap_is_kl_to_the_optimal_q():
    """Λ diagonal: q* is the exact posterior, so the approximation gap vanishes and the
    amortization gap is KL(q ‖ q*); log p(x) by IWAE with q* as proposal."""
    pair, x = ppca(correlated=False)
    x = x[:20]
    gap = inference_gap(*pair, x, num_steps=300)
    mean, cov = linear_gaussian.exact_posterior(x)
    store = pyro.get_param_store()
    q = dist.Normal(x @ store["A"].detach().T + store["b"].detach(), store["s"].detach())
    q_star = dist.Normal(mean, torch.diagonal(cov).sqrt())
    kl = torch.distributions.kl_divergence(q, q_star).sum(-1).numpy()
    within_error(gap["amortization_gap"].to_numpy(), kl, gap["amortization_gap_se"].to_numpy(),
                 slack=0.005)
    within_error(gap["approximation_gap"].to_numpy(), 0.0,
                 gap["approximation_gap_se"].to_numpy(), slack=0.005)
    within_error(gap["log_likelihood"].to_numpy(),
                 linear_gaussian.exact_log_likelihood(x).numpy(),
                 gap["log_likelihood_se"].to_numpy() + 1e-4)
    assert (gap["khat"] < 0.5).all() and gap.attrs["log_likelihood"] == "IWAE, K = 1000"


def test_full_covariance_guide_has_no_approximation_gap():
    """A MultivariateNormal guide written by hand on the correlated pPCA: its family holds
    p(z|x), so the approximation gap vanishes and the amortization gap is KL(q ‖ p(z|x))."""
    pair, x = ppca(correlated=True)
    x = x[:20]
    A, b = 0.1 * torch.randn(Z_DIM, X_DIM), torch.zeros(Z_DIM)
    tril = torch.tensor([[0.8, 0.0], [0.3, 0.5]])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(x @ A.T + b, scale_tril=tril))

    gap = inference_gap(pair.model, guide, x, num_steps=400,
                        exact_log_likelihood=pair.exact_log_likelihood)
    mean, cov = linear_gaussian.exact_posterior(x)
    q = dist.MultivariateNormal(x @ A.T + b, scale_tril=tril)
    kl = torch.distributions.kl_divergence(q, dist.MultivariateNormal(mean, cov)).numpy()
    assert truths(x)[0] > 0.3  # a diagonal q* would fall this far short
    within_error(gap["approximation_gap"].to_numpy(), 0.0,
                 gap["approximation_gap_se"].to_numpy(), slack=0.005)
    within_error(gap["amortization_gap"].to_numpy(), kl, gap["amortization_gap_se"].to_numpy(),
                 slack=0.005)


def test_user_written_vae():
    """The digits VAE of the zoo, untrained, on binary rows: gaps non-negative within error,
    optimized ELBO above the amortized one."""
    pair = bernoulli_vae.make_pair(x_dim=16, z_dim=2, hidden=8)
    x = (torch.rand(10, 16) > 0.5).float()
    gap = inference_gap(*pair, x, num_steps=200, eval_particles=300, iwae_samples=300)
    assert (gap["amortization_gap"] > -3 * gap["amortization_gap_se"]).all()
    assert (gap["approximation_gap"] > -3 * gap["approximation_gap_se"]).all()
    assert gap["amortization_gap"].mean() > 0


def hierarchical_pair():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
            b = pyro.sample("b", dist.Normal(a, 1.0))
            pyro.sample("x", dist.Normal(b, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(x / 2, 1.0))
            pyro.sample("b", dist.Normal(a, 0.5))

    return model, guide


@pytest.mark.parametrize(
    "pair, message",
    [
        (lambda: delta_pair(3), "guide site 'z' is a Delta"),
        (global_pair, "the guide has global sites"),
        (hierarchical_pair, "depend on the draws of other sites"),
    ],
)
def test_unsupported_guides_are_refused(pair, message):
    model, guide = pair()
    x = torch.randn(6, 3) if message.startswith("guide site") else torch.randn(6)
    with pytest.raises(PairError, match=message):
        inference_gap(model, guide, x, num_steps=2)


def test_bad_arguments():
    pair, x = ppca(correlated=False)
    with pytest.raises(PplVaeError, match="num_steps must be a positive integer"):
        inference_gap(*pair, x, num_steps=0)
    with pytest.raises(PplVaeError, match="lr must be a positive number"):
        inference_gap(*pair, x, lr=-1)
    with pytest.raises(PplVaeError, match="one array"):
        inference_gap(*pair, (x, x), exact_log_likelihood=pair.exact_log_likelihood)
