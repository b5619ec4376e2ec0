"""The eight schools of pyro-ppl/pyro ``examples/eight_schools/svi.py``, as written there: the
data ``(J, 2)`` of effects y and their standard errors sigma; eta, mu and tau sampled inside
``pyro.plate("data", J)``, so that the example's ``Normal(torch.zeros(1), ...)`` for mu and tau
broadcasts to one value per school (Pyro's semantics of that code: every site is local); a
custom guide of ``pyro.param``s with ``constraint=constraints.positive`` scales, initialized at
random on first use, and a log-normal for tau written as ``TransformedDistribution(Normal,
ExpTransform())``.

The plate's size is the constant J = 8, not the data's: like the example, the pair runs on all
eight rows only. Nothing was changed.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints, transforms

from . import checked

SOURCE = "examples/eight_schools/svi.py"
J = 8
y = torch.tensor([28, 8, -3, 7, -1, 1, 18, 12]).type(torch.Tensor)
sigma = torch.tensor([15, 10, 16, 11, 9, 11, 10, 18]).type(torch.Tensor)


def model(data):
    y = data[:, 0]
    sigma = data[:, 1]

    with pyro.plate("data", J):
        eta = pyro.sample("eta", dist.Normal(torch.zeros(J), torch.ones(J)))
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
        tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))

        theta = mu + tau * eta

        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def guide(data):
    loc_eta = torch.randn(J)
    scale_eta = 0.1 * torch.rand(J)
    loc_mu = torch.randn(1)
    scale_mu = 0.1 * torch.rand(1)
    loc_logtau = torch.randn(1)
    scale_logtau = 0.1 * torch.rand(1)

    m_eta_param = pyro.param("loc_eta", loc_eta)
    s_eta_param = pyro.param("scale_eta", scale_eta, constraint=constraints.positive)
    m_mu_param = pyro.param("loc_mu", loc_mu)
    s_mu_param = pyro.param("scale_mu", scale_mu, constraint=constraints.positive)
    m_logtau_param = pyro.param("loc_logtau", loc_logtau)
    s_logtau_param = pyro.param("scale_logtau", scale_logtau, constraint=constraints.positive)

    dist_eta = dist.Normal(m_eta_param, s_eta_param)
    dist_mu = dist.Normal(m_mu_param, s_mu_param)
    dist_tau = dist.TransformedDistribution(
        dist.Normal(m_logtau_param, s_logtau_param),
        transforms=transforms.ExpTransform(),
    )

    with pyro.plate("data", J):
        pyro.sample("eta", dist_eta)
        pyro.sample("mu", dist_mu)
        pyro.sample("tau", dist_tau)


def pair():
    constant = "the plate has the constant size J: Pyro runs the pair on all 8 rows only"
    return checked("eight_schools", SOURCE,
                   ("param:constraint(positive), random start",
                    "guide:TransformedDistribution", "plate of a constant size", "data:tensor"),
                   model, guide, torch.stack([y, sigma], dim=1), fit_batch_size=J,
                   skips={"rows": constant, "batch_size": constant})
