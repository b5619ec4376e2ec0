"""The VAE of pyro-ppl/pyro ``examples/vae/vae.py``, shrunk to 8×8 binarized digits.

What was changed: 784 pixels → 64 (``IMAGE_SIZE``; scikit-learn's 8×8 digits, the train split
of ``ppl_vae.load_data("digits", split="train", binarize=True)``, first 300 rows), z_dim 50 → 2
and hidden_dim 400 → 32; the CUDA option, visdom plotting and ``reconstruct_img`` are dropped.
The encoder, decoder, model and guide are otherwise as written there: ``pyro.module("decoder",
...)`` / ``pyro.module("encoder", ...)``, latent ``latent``, observed ``obs`` (Bernoulli with
``validate_args=False``), plate ``pyro.plate("data", x.shape[0])``. The decoder broadcasts
over a leading particle dimension (``nn.Linear`` does).

No closed form: the reference is Pyro's Trace_ELBO at the same parameters.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

from . import Pair, digits

SOURCE = "examples/vae/vae.py"
IMAGE_SIZE = 64
ROWS = 300


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_SIZE, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, IMAGE_SIZE)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, IMAGE_SIZE)
        self.softplus = nn.Softplus()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        loc_img = torch.sigmoid(self.fc21(hidden))
        return loc_img


class VAE(nn.Module):
    def __init__(self, z_dim=2, hidden_dim=32):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    # define the model p(x|z)p(z)
    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = torch.zeros(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z_scale = torch.ones(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder.forward(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, IMAGE_SIZE),
            )
            return loc_img

    # define the guide (i.e. variational distribution) q(z|x)
    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder.forward(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def pair(seed: int = 0, rows: int = ROWS) -> Pair:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = VAE()
    return Pair(
        name="vae",
        source=SOURCE,
        model=vae.model,
        guide=vae.guide,
        data=digits(binarize=True, split="train")[:rows],
        extras={"modules": (vae,)},
    )
