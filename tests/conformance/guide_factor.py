"""A guide with a ``pyro.factor``: a reparameterized draw carried by a ``Delta`` site, its
log-density completed by the log-Jacobian as a guide factor with ``has_rsample=True`` — the use
``pyro.factor``'s docstring describes ("the Jacobian determinant of a transformation of a
reparametrized variable"), the construction of Pyro's autoguides (an auxiliary base site, a
Delta at the transformed value) with the Jacobian as a factor instead of the Delta's
``log_density``.

Poisson factorization in the idiom of ``examples/sparse_gamma_def.py``: per row, z ~ Gamma(1, 1)
(K factors), x ~ Poisson(z W + 0.1) with W ≥ 0 a parameter. The guide draws
u ~ N(encoder(x)) (``infer={"is_auxiliary": True}``), sets z = exp(u) by a Delta site and adds
``pyro.factor("z_log_jacobian", -u.sum(-1), has_rsample=True)``: log q(z) = log N(u) − Σ u.
Trace_ELBO subtracts every guide site's log-density, the factor's included. Sizes: 5 counts
per row, K = 2, 24 rows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import constraints

from . import checked, seeded

SOURCE = "pyro/primitives.py (factor), examples/sparse_gamma_def.py"
X_DIM, K, ROWS = 5, 2, 24


class PoissonFactorization(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(X_DIM, 2 * K)
        with torch.no_grad():  # start near z ≈ 2, scale 0.3 (as after some training)
            self.encoder.weight.mul_(0.1)
            self.encoder.bias.copy_(torch.tensor([0.7] * K + [-1.0] * K))

    def model(self, x):
        weights = pyro.param("weights", lambda: torch.rand(K, X_DIM) + 0.5,
                             constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(x.new_ones(K), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson(z @ weights + 0.1).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            hidden = self.encoder(torch.log1p(x))
            scale = nn.functional.softplus(hidden[..., K:]) + 1e-3
            u = pyro.sample("z_base", dist.Normal(hidden[..., :K], scale).to_event(1),
                            infer={"is_auxiliary": True})
            pyro.sample("z", dist.Delta(u.exp(), event_dim=1))
            pyro.factor("z_log_jacobian", -u.sum(-1), has_rsample=True)


def counts(rows: int = ROWS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rate = torch.distributions.Gamma(2.0, 1.0).sample((rows, K)) @ torch.rand(K, X_DIM,
                                                                             generator=g)
    return torch.poisson(rate + 0.1, generator=g)


def pair(rows: int = ROWS):
    pf = seeded(PoissonFactorization)
    return checked("guide_factor", SOURCE, ("guide:delta+factor(log-Jacobian)",
                                            "guide:auxiliary", "data:tensor"),
                   pf.model, pf.guide, seeded(lambda: counts(rows)))
