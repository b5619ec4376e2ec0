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
import torch.nn as nn

from . import digits

SOURCE = "tutorial/source/svi_part_i.ipynb, tutorial/source/bayesian_regression.ipynb"
PIXELS, Z_DIM, ROWS = 16, 2, 40


class GenerativeVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(PIXELS, 2 * Z_DIM)
        self.decoder = nn.Linear(Z_DIM, PIXELS)

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
            hidden = self.encoder(x)
            scale = nn.functional.softplus(hidden[..., Z_DIM:]) + 1e-3
            pyro.sample("z", dist.Normal(hidden[..., :Z_DIM], scale).to_event(1))


def pair(by_keyword: bool = False):
    from tests.corpus import CorpusPair

    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = GenerativeVAE()
    x = digits(binarize=True, split="train")[:ROWS, :PIXELS]
    return CorpusPair(
        name="generative[keyword]" if by_keyword else "generative",
        source=SOURCE,
        idioms=("model(x=None)", "data:dict" if by_keyword else "data:tensor"),
        model=vae.model,
        guide=vae.guide,
        data={"x": x} if by_keyword else x,
        model_kwargs=None,
        max_plate_nesting=1,
        global_latents=False,
        skips={"enum": "no site is marked for enumeration"},
        fit_batch_size=8,
        extras={"module": vae},
    )
