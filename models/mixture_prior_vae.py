"""VAE with a learned mixture-of-Gaussians prior (cf. Dilokthanakul et al. 2016; Tomczak &
Welling 2018), Bernoulli likelihood.

p(z) = Σ_c π_c N(z | m_c, diag v_c),  p(x|z) = Π_d Bernoulli(x_d | σ(f_θ(z))_d),
q(z|x) = N(μ_φ(x), diag σ²_φ(x)).

KL(q ‖ mixture) has no closed form, so ``estimator="analytic"`` must fall back to the sampled
term log q(z|x) − log p(z) for ``z`` — and ppl_vae says so.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ppl_vae import ModelGuidePair
from ppl_vae.nets import NormalEncoder, mlp


def make_pair(
    x_dim: int = 64, z_dim: int = 8, hidden: int = 128, components: int = 10
) -> ModelGuidePair:
    encoder = NormalEncoder(x_dim, z_dim, hidden)
    decoder = mlp(z_dim, hidden, x_dim)

    def prior(x):
        logits = pyro.param("prior_logits", lambda: x.new_zeros(components))
        locs = pyro.param("prior_locs", lambda: torch.randn(components, z_dim, device=x.device))
        scales = pyro.param(
            "prior_scales", lambda: x.new_ones(components, z_dim), constraint=constraints.positive
        )
        return dist.MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1)
        )

    def model(x):
        pyro.module("decoder", decoder)
        p_z = prior(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", p_z)
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return ModelGuidePair(
        model,
        guide,
        name="mixture_prior_vae",
        modules=(encoder, decoder),
        x_dim=x_dim,
        binary=True,
    )
