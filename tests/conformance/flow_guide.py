"""A VAE whose guide is a conditional normalizing flow, in the idiom of Pyro's normalizing-flows
tutorial (``tutorial/source/normalizing_flows_intro.ipynb``, its conditional section):
``dist.ConditionalTransformedDistribution(base, [T.conditional_spline(...)]).condition(x)``,
the flow's network registered with ``pyro.module``.

q(z | x) pushes a standard Normal through a rational-quadratic spline whose knots a network
computes from x; the model is a linear-Gaussian decoder. No KL of q has a closed form (Pyro's
TraceMeanField_ELBO samples it), and the guide's log-density is the flow's (log-Jacobian
included). Sizes: x_dim 4, z_dim 2, 4 bins, 30 rows of a 2-factor linear model.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn as nn

from . import checked, seeded

SOURCE = "tutorial/source/normalizing_flows_intro.ipynb"
X_DIM, Z_DIM, ROWS = 4, 2, 30


class FlowVAE(nn.Module):
    def __init__(self, x_dim=X_DIM, z_dim=Z_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.decoder = nn.Linear(z_dim, x_dim)
        self.flow = T.conditional_spline(z_dim, context_dim=x_dim, count_bins=4)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("flow", self.flow)
        base = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
        q = dist.ConditionalTransformedDistribution(base, [self.flow]).condition(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)


def rows(n: int = ROWS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(X_DIM, Z_DIM, generator=g)
    return torch.randn(n, Z_DIM, generator=g) @ w.T + 0.5 * torch.randn(n, X_DIM, generator=g)


def pair(n: int = ROWS):
    vae = seeded(FlowVAE)
    return checked("flow_guide", SOURCE, ("guide:flow(conditional spline)", "data:tensor"),
                   vae.model, vae.guide, rows(n))
