"""Imputation with ``obs_mask=``: a latent-factor model of (x, y) per row where some rows lack
y, observed with ``pyro.sample("y", ..., obs=y, obs_mask=has_y)`` (``pyro.sample``'s docstring:
the masked entries become a latent site ``y_unobserved``, which the guide samples).

p(z) = N(0, I), p(x | z) = N(W z + b, 0.5), p(y | z) = N(v·z, 0.5); q(z | x) from an encoder,
q(y_unobserved | x) = N(u·x, s) under ``poutine.mask(mask=~has_y)`` (only the missing labels
are latent). Data: ``(x, y, has_y)``, y 0 where missing, has_y bool (rows 1, 4, 7, ... miss y,
one of them in the first minibatch). Sizes: x_dim 4, z_dim 2, 24 rows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine
from pyro.distributions import constraints

from . import LinearVAE, amortized_normal, checked, seeded

SOURCE = "pyro/primitives.py (sample, obs_mask)"
X_DIM, Z_DIM, ROWS = 4, 2, 24


class Imputer(LinearVAE):
    def __init__(self):
        super().__init__(X_DIM, Z_DIM)
        self.label = nn.Linear(Z_DIM, 1, bias=False)
        self.impute = nn.Linear(X_DIM, 1)

    def model(self, x, y, has_y):
        pyro.module("decoder", self.decoder)
        pyro.module("label", self.label)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)
            pyro.sample("y", dist.Normal(self.label(z).squeeze(-1), 0.5), obs=y,
                        obs_mask=has_y)

    def guide(self, x, y, has_y):
        pyro.module("encoder", self.encoder)
        pyro.module("impute", self.impute)
        scale = pyro.param("y_scale", lambda: torch.tensor(0.7), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", amortized_normal(self.encoder, x, Z_DIM))
            with poutine.mask(mask=~has_y):
                pyro.sample("y_unobserved", dist.Normal(self.impute(x).squeeze(-1), scale))


def data(rows: int = ROWS, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, Z_DIM, generator=g)
    x = z @ torch.randn(Z_DIM, X_DIM, generator=g) + 0.5 * torch.randn(rows, X_DIM, generator=g)
    y = z.sum(-1) + 0.5 * torch.randn(rows, generator=g)
    has_y = torch.arange(rows) % 3 != 1
    return x, torch.where(has_y, y, 0.0), has_y


def pair(rows: int = ROWS):
    imputer = seeded(Imputer)
    return checked("imputation", SOURCE, ("obs_mask", "obs:two-sites",
                                          "mask:poutine.mask(bool data)", "data:bool",
                                          "data:tuple"),
                   imputer.model, imputer.guide, data(rows))
