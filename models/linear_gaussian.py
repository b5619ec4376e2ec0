r"""Probabilistic PCA (Tipping & Bishop 1999) with a linear amortized encoder: the truth table.

Model:  z ~ N(0, I_K),  x | z ~ N(W z + μ, σ² I_D).  Guide:  q(z|x) = N(A x + b, diag s²).

Everything is closed-form, so every estimate ppl_vae makes can be checked against it:

- marginal   p(x) = N(x | μ, C),  C = W Wᵀ + σ² I;
- posterior  p(z|x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹),  M = Wᵀ W + σ² I;
- maximum likelihood (T&B 1999, eqs. 7-8): with λ₁ ≥ … ≥ λ_D the eigenvalues of the sample
  covariance, σ²_ML = mean(λ_{K+1..D}) and the maximized mean log-likelihood per datapoint is
  −½ [D log 2π + Σ_{i≤K} log λ_i + (D − K) log σ²_ML + D].
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ppl_vae import ModelGuidePair


def make_pair(x_dim: int = 64, z_dim: int = 2) -> ModelGuidePair:
    def model(x):
        W = pyro.param("W", lambda: 0.1 * torch.randn(x_dim, z_dim, device=x.device))
        mu = pyro.param("mu", lambda: x.new_zeros(x_dim))
        sigma = pyro.param("sigma", lambda: x.new_ones(()), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)

    def guide(x):
        A = pyro.param("A", lambda: x.new_zeros(z_dim, x_dim))
        b = pyro.param("b", lambda: x.new_zeros(z_dim))
        s = pyro.param("s", lambda: x.new_ones(z_dim), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ A.T + b, s).to_event(1))

    return ModelGuidePair(
        model,
        guide,
        name="linear_gaussian",
        x_dim=x_dim,
        exact_log_likelihood=exact_log_likelihood,
    )


def _decoder() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    store = pyro.get_param_store()
    return store["W"].detach(), store["mu"].detach(), store["sigma"].detach()


def exact_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    """log p(x_n) per row under the current W, μ, σ."""
    W, mu, sigma = _decoder()
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
    return dist.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x)


def exact_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (N, K) and the shared covariance (K, K) of p(z|x_n)."""
    W, mu, sigma = _decoder()
    M = W.T @ W + sigma**2 * torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    M_inv = torch.linalg.inv(M)
    return (x - mu) @ W @ M_inv.T, sigma**2 * M_inv


def set_guide_to_posterior() -> None:
    """Set A, b, s to the best diagonal Gaussian to p(z|x): the exact posterior mean, and the
    variances 1/diag(precision) that minimize KL(q‖p(z|x)); exact when Wᵀ W is diagonal."""
    W, mu, sigma = _decoder()
    M = W.T @ W + sigma**2 * torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    A = torch.linalg.solve(M, W.T)
    store = pyro.get_param_store()
    with torch.no_grad():
        store["A"].unconstrained().copy_(A)
        store["b"].unconstrained().copy_(-A @ mu)
        store["s"].unconstrained().copy_((sigma / torch.diagonal(M).sqrt()).log())


def kl_to_posterior(x: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x_n) ‖ p(z|x_n)) per row, in closed form."""
    store = pyro.get_param_store()
    A, b, s = (store[name].detach() for name in ("A", "b", "s"))
    q = dist.MultivariateNormal(x @ A.T + b, scale_tril=torch.diag(s))
    mean, cov = exact_posterior(x)
    return torch.distributions.kl_divergence(q, dist.MultivariateNormal(mean, cov))


def max_log_likelihood(x: torch.Tensor, z_dim: int) -> float:
    """The maximum over (W, μ, σ) of the mean log-likelihood per datapoint (T&B 1999)."""
    x = x.double()
    n, d = x.shape
    centred = x - x.mean(0)
    eig = torch.linalg.eigvalsh(centred.T @ centred / n).flip(0).clamp_min(1e-12)
    sigma2 = eig[z_dim:].mean()
    log_det = eig[:z_dim].log().sum() + (d - z_dim) * sigma2.log()
    return float(-0.5 * (d * math.log(2 * math.pi) + log_det + d))
