"""Probabilistic PCA with a non-amortized guide: one variational mean and scale per row, as
``pyro.param("z_loc", torch.zeros(N, d))`` indexed by the minibatch's row numbers, which are
passed as int64 data (``z_loc[idx]``); the idiom of Pyro's SVI tutorials (part II: guides
with a parameter per data point; part IV: minibatches by index).

The model p(z) = N(0, I), p(x | z) = N(W z + μ, σ²) with W, μ, σ parameters; the guide
q(z_n) = N(z_loc[n], z_scale[n]) (``constraint=positive``). Data: ``(x, idx)``, idx the row
numbers 0 .. N−1 in int64, cut into minibatches with x. Sizes: x_dim 5, z_dim 2, 30 rows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from tests.pairs import ppca_rows

from . import checked

SOURCE = "tutorial/source/svi_part_ii.ipynb, tutorial/source/svi_part_iv.ipynb"
Z_DIM, ROWS = 2, 30


def model(x, idx):
    W = pyro.param("W", lambda: 0.5 * torch.randn(x.shape[1], Z_DIM))
    mu = pyro.param("mu", lambda: torch.zeros(x.shape[1]))
    sigma = pyro.param("sigma", lambda: torch.ones(()), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)


def guide(x, idx):
    z_loc = pyro.param("z_loc", lambda: torch.zeros(ROWS, Z_DIM))
    z_scale = pyro.param("z_scale", lambda: torch.ones(ROWS, Z_DIM),
                         constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(z_loc[idx], z_scale[idx]).to_event(1))


def pair():
    data = (ppca_rows(0, ROWS), torch.arange(ROWS))

    def init():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model(*data), guide(*data)
            # per-row means away from zero, so that each row's index matters
            pyro.param("z_loc").data.normal_()

    return checked("nonamortized", SOURCE, ("guide:nonamortized(z_loc[idx])", "data:int64",
                                            "data:tuple", "param:constraint"),
                   model, guide, data, init=init)
