"""A VAE with a Gaussian-mixture prior on z whose component is summed out of the model:
``y ~ Categorical(weights)`` marked ``infer={"enumerate": "parallel"}``, z ~ N(locs[y], 1)
indexed with ``Vindex(locs)[..., y, :]`` — the idioms of Pyro's GMM tutorial
(``tutorial/source/gmm.ipynb``: enumeration, ``TraceEnum_ELBO``) and of
``examples/toy_mixture_model_discrete_enumeration.py`` (Vindex into a table by an enumerated
site). The mixture weights are a ``pyro.param`` with ``constraint=constraints.simplex``.

q(z | x) from an encoder; the guide has no y: only ``TraceEnum_ELBO`` (``estimator="enum"``)
trains the pair. Sizes: x_dim 4, z_dim 2, 3 components, 16 rows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex

from . import LinearVAE, amortized_normal, checked, seeded

SOURCE = "tutorial/source/gmm.ipynb, examples/toy_mixture_model_discrete_enumeration.py"
X_DIM, Z_DIM, COMPONENTS, ROWS = 4, 2, 3, 16


class MixturePriorVAE(LinearVAE):
    def __init__(self):
        super().__init__(X_DIM, Z_DIM)

    def model(self, x):
        weights = pyro.param("weights", lambda: torch.ones(COMPONENTS) / COMPONENTS,
                             constraint=constraints.simplex)
        locs = pyro.param("locs", lambda: 2 * torch.randn(COMPONENTS, Z_DIM))
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(weights), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(Vindex(locs)[..., y, :], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", amortized_normal(self.encoder, x, Z_DIM))


def rows(n: int = ROWS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = 2 * torch.randn(COMPONENTS, X_DIM, generator=g)
    return centers[torch.arange(n) % COMPONENTS] + 0.5 * torch.randn(n, X_DIM, generator=g)


def pair(n: int = ROWS):
    vae = seeded(MixturePriorVAE)
    return checked(
        "mixture_prior", SOURCE,
        ("discrete:model-enum", "Vindex", "param:constraint(simplex)", "data:tensor"),
        vae.model, vae.guide, rows(n), estimator="enum",
        skips={"sampled": ("the model sums y out; Trace_ELBO would draw it from its prior, "
                           "another objective (ppl_vae refuses it)"),
               "analytic": "TraceMeanField_ELBO needs every model latent in the guide",
               "weights": ("Pyro's vectorized_importance_weights draws y from its prior as "
                           "part of the weight: not an importance weight of p(x)")},
    )
