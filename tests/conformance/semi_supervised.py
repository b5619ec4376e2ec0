"""A semi-supervised VAE with two observed sites: the image x and, where a row has one, its
label y, the labelled rows chosen by a bool per-row array ``has_y`` under
``poutine.mask(mask=has_y)`` — the idiom of pyro-ppl/pyro ``examples/vae/ss_vae_M2.py`` (which
runs its supervised and unsupervised branches on separate batches) written for one batch of
mixed rows, as Pyro's ``poutine.mask`` docs suggest.

p(z) = N(0, I), p(x | z) = Bernoulli(decoder(z)), p(y | z) = Categorical(classifier(z));
q(z | x) from an encoder. Data: the dict ``{"x", "y", "has_y"}`` (y int64 labels, 0 where a
row has none; has_y bool: a third of the rows, among them rows of the first minibatch, lack a
label). Sizes: 16 pixels (4×4 patch), 3 classes (digits 0-2), z_dim 2, 30 rows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine

from . import LinearVAE, amortized_normal, checked, digits_with_labels, seeded

SOURCE = "examples/vae/ss_vae_M2.py"
PIXELS, CLASSES, Z_DIM, ROWS = 16, 3, 2, 30


class SemiSupervisedVAE(LinearVAE):
    def __init__(self):
        super().__init__(PIXELS, Z_DIM)
        self.classifier = nn.Linear(Z_DIM, CLASSES)

    def model(self, x, y, has_y):
        pyro.module("decoder", self.decoder)
        pyro.module("classifier", self.classifier)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)
            with poutine.mask(mask=has_y):
                pyro.sample("y", dist.Categorical(logits=self.classifier(z)), obs=y)

    def guide(self, x, y, has_y):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", amortized_normal(self.encoder, x, Z_DIM))


def data(rows: int = ROWS) -> dict[str, torch.Tensor]:
    x, y = digits_with_labels(binarize=True, split="train")
    keep = y < CLASSES
    x, y = x[keep][:rows, :PIXELS], y[keep][:rows]
    has_y = torch.arange(rows) % 3 != 1
    return {"x": x, "y": torch.where(has_y, y, 0), "has_y": has_y}


def pair(rows: int = ROWS):
    vae = seeded(SemiSupervisedVAE)
    return checked("semi_supervised", SOURCE, ("obs:two-sites", "mask:poutine.mask(bool data)",
                                               "data:bool", "data:int64", "data:dict"),
                   vae.model, vae.guide, data(rows))
