"""The unsupervised M2 VAE (Kingma, Rezende, Mohamed & Welling 2014, "Semi-supervised learning
with deep generative models", §2.2): a discrete class y beside a continuous style z.

p(y) = Categorical(1/C),  p(z) = N(0, I),
p(x|y, z) = Π_d Bernoulli(x_d | σ(f_θ([z, onehot y]))_d),
q(y|x) = Categorical(π_φ(x)),  q(z|x, y) = N(μ_φ([x, onehot y]), diag σ²_φ([x, onehot y])).

The guide's y is marked for enumeration (``config_enumerate``): under ``estimator="enum"``
(``TraceEnum_ELBO``) its expectation is an exact sum over the C classes, with one z drawn per
class, so the KL term KL(q(y|x) ‖ p(y)) is exact and the gradient of q(y|x) has no
score-function noise; under ``"sampled"`` (``Trace_ELBO``) y is sampled and its gradient is
the score-function one. ``"analytic"`` refuses the pair (a Categorical has no ``rsample``).
The networks broadcast over the enumerated and particle dims.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch.nn import functional as F

from ppl_vae import ModelGuidePair
from ppl_vae.nets import NormalEncoder, mlp


def make_pair(
    x_dim: int = 64, z_dim: int = 8, hidden: int = 128, classes: int = 10
) -> ModelGuidePair:
    classifier = mlp(x_dim, hidden, classes)
    encoder = NormalEncoder(x_dim + classes, z_dim, hidden)
    decoder = mlp(z_dim + classes, hidden, x_dim)

    def joined(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, classes).to(x.dtype)
        shape = torch.broadcast_shapes(x.shape[:-1], onehot.shape[:-1])
        return torch.cat([x.expand(*shape, -1), onehot.expand(*shape, -1)], -1)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(classes)))
            z = pyro.sample(
                "z", dist.Normal(x.new_zeros(z_dim), x.new_ones(z_dim)).to_event(1)
            )
            logits = decoder(joined(z, y))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    @config_enumerate
    def guide(x):
        pyro.module("classifier", classifier)
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=classifier(x)))
            loc, scale = encoder(joined(x, y))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return ModelGuidePair(
        model,
        guide,
        name="m2_vae",
        modules=(classifier, encoder, decoder),
        x_dim=x_dim,
        binary=True,
    )
