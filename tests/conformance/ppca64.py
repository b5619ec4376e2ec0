"""Probabilistic PCA in float64: a local-only linear-Gaussian pair with a closed-form log p(x).

pyro-ppl/pyro has no PCA example; this pair is ``examples/vae/vae.py`` with a linear-Gaussian
decoder, all in torch.float64. Kept from vae.py: the names (latent ``latent``, observed
``obs``, plate ``pyro.plate("data", x.shape[0])``), the N(0, I) prior
built with ``dtype=x.dtype``, the amortized Normal guide q(z|x) = N(loc(x), scale) in the same
plate. Changed: decoder and encoder are linear maps held as ``pyro.param`` (W, mu, sigma;
A, b, s) created with the data's dtype, the likelihood is Normal(W z + mu, sigma) instead of
Bernoulli, and data and parameters are float64.

Data: 200 rows, D = 5, K = 2, float64, from a fixed pPCA (seed 0).

Truths under the current param store (Tipping & Bishop 1999):

- log p(x_n) = log N(x_n | mu, W Wᵀ + sigma² I);
- p(z | x_n) = N(M⁻¹ Wᵀ (x_n − mu), sigma² M⁻¹), M = Wᵀ W + sigma² I. When the columns of W
  are orthogonal, M is diagonal and the guide can equal the posterior:
  :func:`set_guide_to_posterior` first rotates W ← W V (W = U S Vᵀ), which leaves p(x)
  unchanged, then sets A, b, s to the exact posterior, so the ELBO of every row is log p(x_n)
  for every draw.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import Pair

SOURCE = "examples/vae/vae.py"
N, D, K = 200, 5, 2
DTYPE = torch.float64


def make_data(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, K, generator=g, dtype=DTYPE)
    z = torch.randn(N, K, generator=g, dtype=DTYPE)
    return z @ w.T + 1.0 + 0.3 * torch.randn(N, D, generator=g, dtype=DTYPE)


def model(x):
    W = pyro.param("W", lambda: 0.3 * torch.randn(D, K, dtype=x.dtype, device=x.device))
    mu = pyro.param("mu", lambda: x.new_zeros(D))
    sigma = pyro.param("sigma", lambda: x.new_ones(()), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z_loc = torch.zeros(x.shape[0], K, dtype=x.dtype, device=x.device)
        z_scale = torch.ones(x.shape[0], K, dtype=x.dtype, device=x.device)
        z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
        pyro.sample("obs", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)


def guide(x):
    A = pyro.param("A", lambda: x.new_zeros(K, D))
    b = pyro.param("b", lambda: x.new_zeros(K))
    s = pyro.param("s", lambda: x.new_ones(K), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("latent", dist.Normal(x @ A.T + b, s).to_event(1))


def _decoder() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    store = pyro.get_param_store()
    return store["W"].detach(), store["mu"].detach(), store["sigma"].detach()


def exact_row_log_evidence(x: torch.Tensor) -> torch.Tensor:
    """log p(x_n) per row under the current W, mu, sigma (float64)."""
    W, mu, sigma = _decoder()
    cov = W @ W.T + sigma**2 * torch.eye(D, dtype=W.dtype)
    return dist.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x)


def exact_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (N, K) and the shared covariance (K, K) of p(z | x_n)."""
    W, mu, sigma = _decoder()
    M = W.T @ W + sigma**2 * torch.eye(K, dtype=W.dtype)
    M_inv = torch.linalg.inv(M)
    return (x - mu) @ W @ M_inv.T, sigma**2 * M_inv


def set_guide_to_posterior() -> None:
    """Rotate W to orthogonal columns (p(x) unchanged), then set A, b, s to p(z|x) exactly."""
    store = pyro.get_param_store()
    W, mu, sigma = _decoder()
    _, _, vh = torch.linalg.svd(W, full_matrices=False)
    with torch.no_grad():
        store["W"].unconstrained().copy_(W @ vh.T)
    W = store["W"].detach()
    M = W.T @ W + sigma**2 * torch.eye(K, dtype=W.dtype)
    A = torch.linalg.solve(M, W.T)
    with torch.no_grad():
        store["A"].unconstrained().copy_(A)
        store["b"].unconstrained().copy_(-A @ mu)
        store["s"].unconstrained().copy_((sigma / torch.diagonal(M).sqrt()).log())


def pair() -> Pair:
    x = make_data()
    return Pair(
        name="ppca64",
        source=SOURCE,
        model=model,
        guide=guide,
        data=x,
        exact_row_log_evidence=lambda: exact_row_log_evidence(x),
        exact_log_evidence=lambda: float(exact_row_log_evidence(x).sum()),
    )
