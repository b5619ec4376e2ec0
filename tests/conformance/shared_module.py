"""One network registered under two names: the model registers the decoder alone
(``pyro.module("decoder", vae.decoder)``), the guide the whole VAE (``pyro.module("vae", vae)``),
so the decoder's weights sit in Pyro's param store as ``decoder$$$...`` and as
``vae$$$decoder...`` (one tensor, two names). Several of Pyro's examples register this way
(the CVAE example registers its whole module in the model; ``examples/vae/vae.py`` and
``ss_vae_M2.py`` register parts); Pyro's SVI optimizes each tensor once.

p(z) = N(0, I), p(x | z) = Bernoulli(decoder(z)), q(z | x) = N(encoder(x)). Data: the 4×4
top-left patch of 40 binarized digits.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

from . import digits

SOURCE = "examples/vae/vae.py, examples/cvae/cvae.py"
PIXELS, Z_DIM, ROWS = 16, 2, 40


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(PIXELS, 2 * Z_DIM)
        self.decoder = nn.Linear(Z_DIM, PIXELS)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            hidden = self.encoder(x)
            scale = nn.functional.softplus(hidden[..., Z_DIM:]) + 1e-3
            pyro.sample("z", dist.Normal(hidden[..., :Z_DIM], scale).to_event(1))


def pair(rows: int = ROWS):
    from tests.corpus import CorpusPair

    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = VAE()
    return CorpusPair(
        name="shared_module",
        source=SOURCE,
        idioms=("pyro.module: one network under two names", "data:tensor"),
        model=vae.model,
        guide=vae.guide,
        data=digits(binarize=True, split="train")[:rows, :PIXELS],
        model_kwargs=None,
        max_plate_nesting=1,
        global_latents=False,
        skips={"enum": "no site is marked for enumeration"},
        fit_batch_size=8,
        extras={"modules": (vae,)},
    )
