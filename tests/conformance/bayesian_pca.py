"""Bayesian PCA: a global loading matrix with a prior, local latents per row.

pyro-ppl/pyro has no PCA example; this pair is ``examples/vae/vae.py`` with its decoder made
linear and Bayesian. Kept from vae.py: the names (latent ``latent``, observed ``obs``, plate
``pyro.plate("data", x.shape[0])``), the standard-normal prior of ``latent`` built with the
data's dtype, an amortized Normal guide q(z|x) inside the same plate. Changed: the decoder
network is a D×K loading matrix ``W`` drawn from N(0, 1) *outside* the data plate (a global
latent, as the tutorial bayesian_regression.ipynb draws its weights), the likelihood is
Normal(W z, 0.5) instead of Bernoulli, the encoder is linear (z_loc = x Aᵀ + c, a learned
scale per latent dim), and W gets a mean-field Normal guide.

Data: 300 rows, D = 5, K = 2, drawn from the model with a fixed W (seed 0).
No closed form: the reference is Pyro's Trace_ELBO at the same parameters.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import Pair

SOURCE = "examples/vae/vae.py"
N, D, K = 300, 5, 2
NOISE_SD = 0.5


def make_data(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, K, generator=g)
    z = torch.randn(N, K, generator=g)
    return z @ w.T + NOISE_SD * torch.randn(N, D, generator=g)


def model(x):
    W = pyro.sample("W", dist.Normal(x.new_zeros(D, K), 1.0).to_event(2))
    with pyro.plate("data", x.shape[0]):
        z_loc = torch.zeros(x.shape[0], K, dtype=x.dtype, device=x.device)
        z_scale = torch.ones(x.shape[0], K, dtype=x.dtype, device=x.device)
        z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
        # W z for each row, broadcasting over any leading particle dimension of W and z
        loc = (z.unsqueeze(-2) * W).sum(-1)
        pyro.sample("obs", dist.Normal(loc, NOISE_SD).to_event(1), obs=x)


def guide(x):
    W_loc = pyro.param("W_loc", lambda: 0.5 * torch.randn(D, K, dtype=x.dtype))
    W_scale = pyro.param(
        "W_scale", lambda: x.new_full((D, K), 0.1), constraint=constraints.positive
    )
    pyro.sample("W", dist.Normal(W_loc, W_scale).to_event(2))
    A = pyro.param("A", lambda: x.new_zeros(K, D))
    c = pyro.param("c", lambda: x.new_zeros(K))
    s = pyro.param("s", lambda: x.new_ones(K), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("latent", dist.Normal(x @ A.T + c, s).to_event(1))


def pair() -> Pair:
    return Pair(
        name="bayesian_pca",
        source=SOURCE,
        model=model,
        guide=guide,
        data=make_data(),
        global_sites=("W",),
    )
