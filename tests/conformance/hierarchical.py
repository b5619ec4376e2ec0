"""A hierarchical model with nested plates: rows (subjects) in groups, repeated measurements
per row. The idioms of Pyro's hierarchical examples (``examples/eight_schools``, the
mixed-effects models of ``examples/mixed_hmm``) and its tensor-shapes tutorial: group effects
``a ~ N(mu_a, sigma_a)`` in a ``pyro.plate("groups", G, dim=-2)`` (a global plate at the data
plate's dim), picked per row with ``a[..., group, :]`` by an int64 group index passed as data;
a per-row effect u in ``pyro.plate("data", n, dim=-2)``; the measurements in a nested
``pyro.plate("measurements", M, dim=-1)``.

The guide is written by hand: Normal for mu_a, a log-normal (``TransformedDistribution`` with
``ExpTransform``, as the eight-schools guide does for tau) for sigma_a, Normal with
``constraint=positive`` scales for a, and an amortized Normal for u. Data: ``(x, group)``,
x (n, M) float, group int64. Sizes: 3 groups, 4 measurements, 18 rows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import constraints, transforms

from . import checked, seeded

SOURCE = "examples/eight_schools/svi.py, tutorial/source/tensor_shapes.ipynb"
GROUPS, MEASUREMENTS, ROWS = 3, 4, 18


def model(x, group):
    mu_a = pyro.sample("mu_a", dist.Normal(x.new_zeros(()), 2.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(x.new_ones(())))
    sigma = pyro.param("sigma", lambda: torch.tensor(0.8), constraint=constraints.positive)
    with pyro.plate("groups", GROUPS, dim=-2):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
    with pyro.plate("data", x.shape[0], dim=-2):
        u = pyro.sample("u", dist.Normal(x.new_zeros(()), 1.0))
        loc = a[..., group, :] + u
        with pyro.plate("measurements", MEASUREMENTS, dim=-1):
            pyro.sample("obs", dist.Normal(loc, sigma), obs=x)


def make_guide():
    encoder = nn.Linear(MEASUREMENTS, 2)

    def guide(x, group):
        loc_mu = pyro.param("loc_mu", lambda: torch.tensor(0.3))
        scale_mu = pyro.param("scale_mu", lambda: torch.tensor(0.2),
                              constraint=constraints.positive)
        loc_logsigma = pyro.param("loc_logsigma", lambda: torch.tensor(-0.5))
        scale_logsigma = pyro.param("scale_logsigma", lambda: torch.tensor(0.1),
                                    constraint=constraints.positive)
        loc_a = pyro.param("loc_a", lambda: 0.5 * torch.randn(GROUPS, 1))
        scale_a = pyro.param("scale_a", lambda: torch.full((GROUPS, 1), 0.3),
                             constraint=constraints.positive)
        pyro.sample("mu_a", dist.Normal(loc_mu, scale_mu))
        pyro.sample("sigma_a", dist.TransformedDistribution(
            dist.Normal(loc_logsigma, scale_logsigma), transforms=transforms.ExpTransform()))
        with pyro.plate("groups", GROUPS, dim=-2):
            pyro.sample("a", dist.Normal(loc_a, scale_a))
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0], dim=-2):
            hidden = encoder(x)
            scale = nn.functional.softplus(hidden[..., 1:]) + 1e-3
            pyro.sample("u", dist.Normal(hidden[..., :1], scale))

    return guide


def data(rows: int = ROWS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    group = torch.arange(rows) % GROUPS
    effect = torch.tensor([-1.0, 0.5, 2.0])[group] + 0.5 * torch.randn(rows, generator=g)
    return effect[:, None] + 0.8 * torch.randn(rows, MEASUREMENTS, generator=g), group


def pair(rows: int = ROWS):
    return checked("hierarchical", SOURCE,
                   ("plate:nested", "global plate at the data plate's dim",
                    "group index a[..., group, :]", "data:int64",
                    "guide:TransformedDistribution(ExpTransform)", "param:constraint",
                    "global:latent", "data:tuple"),
                   model, seeded(make_guide), data(rows), max_plate_nesting=2,
                   global_latents=True, fit_batch_size=6)
