"""Gaussian VAE: MLP encoder and decoder, Gaussian likelihood with a learned per-feature scale.

p(z) = N(0, I),  p(x|z) = N(x | f_θ(z), diag s²),  s learned,  q(z|x) = N(μ_φ(x), diag σ²_φ(x)).
"""

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from ppl_vae import ModelGuidePair
from ppl_vae.nets import NormalEncoder, mlp


def make_pair(x_dim: int = 64, z_dim: int = 8, hidden: int = 128) -> ModelGuidePair:
    encoder = NormalEncoder(x_dim, z_dim, hidden)
    decoder = mlp(z_dim, hidden, x_dim)

    def model(x):
        pyro.module("decoder", decoder)
        x_scale = pyro.param(
            "x_scale", x.new_full((x_dim,), 0.3), constraint=constraints.greater_than(1e-3)
        )
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(z_dim), x.new_ones(z_dim)).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(decoder(z), x_scale).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return ModelGuidePair(
        model, guide, name="gaussian_vae", modules=(encoder, decoder), x_dim=x_dim
    )
