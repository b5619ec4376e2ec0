"""The Bayesian regression of Pyro's tutorial ``tutorial/source/bayesian_regression.ipynb``,
written as there: a ``PyroModule`` whose ``PyroModule[nn.Linear]`` has ``PyroSample`` priors on
its weight and bias, ``sigma ~ Uniform(0, 10)``, ``forward(x, y=None)``, and
``AutoDiagonalNormal(model)`` as the guide.

This pair does not broadcast over a leading particle dim: the sampled weight of shape
(particles, 1, 1, 3) cannot enter ``nn.Linear``. Pyro's vectorized estimators refuse it; its
one-particle Trace_ELBO runs it.

What was changed: the tutorial's data (the rugged data set: log GDP against terrain
ruggedness, in or out of Africa, 170 nations) is downloaded there; here 170 rows of the same
three features are drawn from a seeded generator, with coefficients near the tutorial's fit.

:class:`BroadcastingRegression` is the same model written to broadcast (the sampled weight's
row taken with ``[..., 0, :]`` and multiplied elementwise): the same sites in the same order,
so ``AutoDiagonalNormal`` of either reads the same parameters. It measures what the vectorized
route costs.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn

from . import checked

SOURCE = "tutorial/source/bayesian_regression.ipynb"
ROWS = 170


class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


class BroadcastingRegression(BayesianRegression):
    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        weight, bias = self.linear.weight[..., 0, :], self.linear.bias[..., 0]
        mean = (x * weight).sum(-1) + bias
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def rugged(rows: int = ROWS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_data, y_data): cont_africa, rugged, their product; log GDP."""
    g = torch.Generator().manual_seed(seed)
    africa = (torch.rand(rows, generator=g) < 0.3).float()
    rugged_ = 6 * torch.rand(rows, generator=g) ** 2
    x = torch.stack([africa, rugged_, africa * rugged_], dim=1)
    y = 9.2 - 1.9 * africa - 0.2 * rugged_ + 0.4 * africa * rugged_
    return x, y + 0.9 * torch.randn(rows, generator=g)


def pair(rows: int = ROWS, broadcasting: bool = False):
    """The tutorial's pair (or its broadcasting twin) on ``rows`` rows."""
    from pyro.infer.autoguide import AutoDiagonalNormal

    model = (BroadcastingRegression if broadcasting else BayesianRegression)(3, 1)
    return checked(
        "bayesian_regression[broadcasting]" if broadcasting else "bayesian_regression", SOURCE,
        ("PyroModule", "PyroSample", "autoguide:AutoDiagonalNormal(whole model)",
         "forward(x, y=None)", "global:latent", "no particle broadcasting", "data:tuple"),
        model, AutoDiagonalNormal(model), rugged(rows), global_latents=True,
        broadcasts=broadcasting, fit_batch_size=32,
        extras={} if broadcasting else {"particles": 50, "batch_sizes": [85]},
        skips={"analytic": ("an autoguide's Delta at a constrained site (sigma) carries a "
                            "log-Jacobian that TraceMeanField_ELBO drops"),
               "weights": ("Pyro's vectorized_importance_weights needs a pair that broadcasts "
                           "over particles")},
    )
