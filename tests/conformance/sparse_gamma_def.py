"""The sparse gamma deep exponential family of pyro-ppl/pyro ``examples/sparse_gamma_def.py``
(Ranganath et al. 2015), tiny.

The model and the custom mean-field Gamma guide are as written there, including their plates:
each global weight site lives in its own plate (``w_top_plate`` …, no ``dim=`` given), which
Pyro places at dim −1 — the same dim as the ``data`` plate of the local ``z_*`` sites. The
alternative guide ``AutoDiagonalNormal(model, init_loc_fn=init_to_feasible)`` is the example's
``--guide auto``.

What was changed: widths 100/40/15 → 3/2/2 and the 64×64 = 4,096-pixel faces → 10 columns;
the Olivetti faces download → 20 rows of synthetic counts (Poisson of a rank-2 product of
Gamma(1, 1) factors, scaled by 2, numpy seed 0); ``image_size`` is read from the data. The
parameter clipping (``clip_params``), AdagradRMSProp and the EasyGuide are not used; the
site and param names are built with f-strings instead of ``%`` (the linter's rule).
No closed form: the reference is Pyro's Trace_ELBO at the same parameters.
"""

from __future__ import annotations

import numpy as np
import pyro
import torch
from pyro.distributions import Gamma, Poisson
from pyro.infer.autoguide import AutoDiagonalNormal, init_to_feasible
from torch.nn.functional import softplus

from . import Pair

SOURCE = "examples/sparse_gamma_def.py"
ROWS, COLUMNS = 20, 10


def make_data(seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rate = 2.0 * rng.gamma(1.0, 1.0, size=(ROWS, 2)) @ rng.gamma(1.0, 1.0, size=(2, COLUMNS))
    return torch.tensor(rng.poisson(rate), dtype=torch.float32)


# helper for initializing variational parameters
def rand_tensor(shape, mean, sigma):
    return mean * torch.ones(shape) + sigma * torch.randn(shape)


class SparseGammaDEF:
    def __init__(self, image_size=COLUMNS):
        # define the sizes of the layers in the deep exponential family
        self.top_width = 3
        self.mid_width = 2
        self.bottom_width = 2
        self.image_size = image_size
        # define hyperparameters that control the prior
        self.alpha_z = torch.tensor(0.1)
        self.beta_z = torch.tensor(0.1)
        self.alpha_w = torch.tensor(0.1)
        self.beta_w = torch.tensor(0.3)
        # define parameters used to initialize variational parameters
        self.alpha_init = 0.5
        self.mean_init = 0.0
        self.sigma_init = 0.1

    # define the model
    def model(self, x):
        x_size = x.size(0)

        # sample the global weights
        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            w_top = pyro.sample("w_top", Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            w_mid = pyro.sample("w_mid", Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            w_bottom = pyro.sample("w_bottom", Gamma(self.alpha_w, self.beta_w))

        # sample the local latent random variables
        with pyro.plate("data", x_size):
            z_top = pyro.sample(
                "z_top",
                Gamma(self.alpha_z, self.beta_z).expand([self.top_width]).to_event(1),
            )
            w_top = (
                w_top.reshape(self.top_width, self.mid_width)
                if w_top.dim() == 1
                else w_top.reshape(-1, self.top_width, self.mid_width)
            )
            mean_mid = torch.matmul(z_top, w_top)
            z_mid = pyro.sample("z_mid", Gamma(self.alpha_z, self.beta_z / mean_mid).to_event(1))

            w_mid = (
                w_mid.reshape(self.mid_width, self.bottom_width)
                if w_mid.dim() == 1
                else w_mid.reshape(-1, self.mid_width, self.bottom_width)
            )
            mean_bottom = torch.matmul(z_mid, w_mid)
            z_bottom = pyro.sample(
                "z_bottom", Gamma(self.alpha_z, self.beta_z / mean_bottom).to_event(1)
            )

            w_bottom = (
                w_bottom.reshape(self.bottom_width, self.image_size)
                if w_bottom.dim() == 1
                else w_bottom.reshape(-1, self.bottom_width, self.image_size)
            )
            mean_obs = torch.matmul(z_bottom, w_bottom)

            # observe the data using a poisson likelihood
            pyro.sample("obs", Poisson(mean_obs).to_event(1), obs=x)

    # define our custom guide a.k.a. variational distribution.
    # (note the guide is mean field gamma)
    def guide(self, x):
        x_size = x.size(0)

        # define a helper function to sample z's for a single layer
        def sample_zs(name, width):
            alpha_z_q = pyro.param(
                f"alpha_z_q_{name}",
                lambda: rand_tensor((x_size, width), self.alpha_init, self.sigma_init),
            )
            mean_z_q = pyro.param(
                f"mean_z_q_{name}",
                lambda: rand_tensor((x_size, width), self.mean_init, self.sigma_init),
            )
            alpha_z_q, mean_z_q = softplus(alpha_z_q), softplus(mean_z_q)
            pyro.sample(f"z_{name}", Gamma(alpha_z_q, alpha_z_q / mean_z_q).to_event(1))

        # define a helper function to sample w's for a single layer
        def sample_ws(name, width):
            alpha_w_q = pyro.param(
                f"alpha_w_q_{name}",
                lambda: rand_tensor((width), self.alpha_init, self.sigma_init),
            )
            mean_w_q = pyro.param(
                f"mean_w_q_{name}",
                lambda: rand_tensor((width), self.mean_init, self.sigma_init),
            )
            alpha_w_q, mean_w_q = softplus(alpha_w_q), softplus(mean_w_q)
            pyro.sample(f"w_{name}", Gamma(alpha_w_q, alpha_w_q / mean_w_q))

        # sample the global weights
        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            sample_ws("top", self.top_width * self.mid_width)
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            sample_ws("mid", self.mid_width * self.bottom_width)
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            sample_ws("bottom", self.bottom_width * self.image_size)

        # sample the local latent random variables
        with pyro.plate("data", x_size):
            sample_zs("top", self.top_width)
            sample_zs("mid", self.mid_width)
            sample_zs("bottom", self.bottom_width)


def pair(guide: str = "custom") -> Pair:
    """``guide``: ``"custom"`` (the example's mean-field Gamma guide) or ``"auto"``."""
    x = make_data()
    sgdef = SparseGammaDEF(image_size=x.shape[1])
    g = (
        sgdef.guide
        if guide == "custom"
        else AutoDiagonalNormal(sgdef.model, init_loc_fn=init_to_feasible)
    )
    return Pair(
        name=f"sparse_gamma_def[{guide}]",
        source=SOURCE,
        model=sgdef.model,
        guide=g,
        data=x,
        global_sites=("w_top", "w_mid", "w_bottom"),
    )
