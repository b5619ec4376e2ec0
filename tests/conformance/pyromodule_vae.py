"""A VAE written with ``PyroModule``/``PyroSample``/``PyroParam`` (Pyro's ``pyro.nn.module``
documentation and the Bayesian-regression tutorial's idiom), on 8×8 binarized digits.

The model is a ``PyroModule`` whose decoder is a ``PyroModule[nn.Linear]`` with a
``PyroSample`` prior on its bias: a global latent ``decoder.linear.bias`` inside a network.
Read first outside the data plate, it is drawn once per run of the model (a PyroModule caches
its samples per call of the outermost module) and reused inside the plate. The guide is a
``PyroModule`` too: an encoder ``PyroModule[nn.Linear]`` for q(z|x) and ``PyroParam``s (one
with ``constraint=positive``) for q(bias). Nothing calls ``pyro.module``: PyroModules register
their parameters themselves.

Sizes: 64 pixels → the first 16 (a 4×4 patch), z_dim 2, 40 rows of the train split.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam, PyroSample

from . import checked, digits, seeded

SOURCE = "pyro/nn/module.py docs, tutorial/source/bayesian_regression.ipynb"
PIXELS, Z_DIM, ROWS = 16, 2, 40


class Decoder(PyroModule):
    def __init__(self, z_dim, x_dim):
        super().__init__()
        self.linear = PyroModule[nn.Linear](z_dim, x_dim)
        self.linear.bias = PyroSample(dist.Normal(0.0, 1.0).expand([x_dim]).to_event(1))

    def forward(self, z):
        return torch.sigmoid(self.linear(z))


class VAE(PyroModule):
    """The model: ``vae(x)``."""

    def __init__(self, x_dim=PIXELS, z_dim=Z_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.decoder = Decoder(z_dim, x_dim)

    def forward(self, x):
        _ = self.decoder.linear.bias  # the global latent, drawn outside the data plate
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            probs = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x)


class Guide(PyroModule):
    def __init__(self, x_dim=PIXELS, z_dim=Z_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = PyroModule[nn.Linear](x_dim, 2 * z_dim)
        self.bias_loc = PyroParam(torch.zeros(x_dim))
        self.bias_scale = PyroParam(torch.full((x_dim,), 0.3), constraint=constraints.positive)

    def forward(self, x):
        pyro.sample("decoder.linear.bias",
                    dist.Normal(self.bias_loc, self.bias_scale).to_event(1))
        with pyro.plate("data", x.shape[0]):
            hidden = self.encoder(x)
            scale = nn.functional.softplus(hidden[..., self.z_dim:]) + 1e-3
            pyro.sample("z", dist.Normal(hidden[..., : self.z_dim], scale).to_event(1))


def pair(rows: int = ROWS):
    model, guide = seeded(lambda: (VAE(), Guide()))
    return checked("pyromodule_vae", SOURCE,
                   ("PyroModule", "PyroSample(global in a network)", "PyroParam(constraint)",
                    "global:latent", "data:tensor"),
                   model, guide, digits(binarize=True, split="train")[:rows, :PIXELS],
                   global_latents=True)
