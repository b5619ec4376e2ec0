"""A VAE written generatively, ``model(x=None)``: the same function draws data when called
without it (the idiom of Pyro's SVI part I and the Bayesian-regression tutorial's
``forward(x, y=None)``), and scores it under ``obs=x`` during inference.

The model's plate is sized by the data when there is some, else by ``num_rows``
(a keyword constant); the guide takes the same signature. Data: the 4×4 top-left patch of
40 binarized digits, passed as ``model(x)`` (a tensor) or ``model(x=...)`` (a dict).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from . import LinearVAE, amortized_normal, checked, digits, seeded

SOURCE = "tutorial/source/svi_part_i.ipynb, tutorial/source/bayesian_regression.ipynb"
PIXELS, Z_DIM, ROWS = 16, 2, 40


class GenerativeVAE(LinearVAE):
    def __init__(self):
        super().__init__(PIXELS, Z_DIM)

    def model(self, x=None, num_rows=1):
        pyro.module("decoder", self.decoder)
        n = num_rows if x is None else x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM), 1.0).to_event(1))
            probs = torch.sigmoid(self.decoder(z))
            return pyro.sample("x", dist.Bernoulli(probs).to_event(1), obs=x)

    def guide(self, x=None, num_rows=1):
        pyro.module("encoder", self.encoder)
        if x is None:  # generating: no posterior to draw from
            return
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", amortized_normal(self.encoder, x, Z_DIM))


def pair(by_keyword: bool = False):
    vae = seeded(GenerativeVAE)
    x = digits(binarize=True, split="train")[:ROWS, :PIXELS]
    return checked("generative[keyword]" if by_keyword else "generative", SOURCE,
                   ("model(x=None)", "data:dict" if by_keyword else "data:tensor"),
                   vae.model, vae.guide, {"x": x} if by_keyword else x)
