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

from . import LinearVAE, amortized_normal, checked, digits, seeded

SOURCE = "examples/vae/vae.py, examples/cvae/cvae.py"
PIXELS, Z_DIM, ROWS = 16, 2, 40


class VAE(LinearVAE):
    def __init__(self):
        super().__init__(PIXELS, Z_DIM)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", amortized_normal(self.encoder, x, Z_DIM))


def pair(rows: int = ROWS):
    vae = seeded(VAE)
    return checked("shared_module", SOURCE, ("pyro.module: one network under two names",
                                             "data:tensor"),
                   vae.model, vae.guide, digits(binarize=True, split="train")[:rows, :PIXELS],
                   extras={"modules": (vae,)})
