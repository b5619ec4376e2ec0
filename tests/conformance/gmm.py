"""The Gaussian mixture of pyro-ppl/pyro ``tutorial/source/gmm.ipynb``: a model whose discrete
``assignment`` is summed out (``config_enumerate`` on the model, absent from the guide), and an
``AutoDelta`` guide over the global ``weights``, ``scale`` and ``locs`` (MAP).

What was changed:

- ``init_loc_fn`` puts ``locs`` at (0.5, 11.0) instead of two random data points, and there is
  no search over 100 seeds for the best start (one deterministic start is all a test needs);
- ``K`` and ``data`` are module constants, as in the tutorial's cells.

The model, the guide (``AutoDelta(poutine.block(model, expose=[...]))``) and the data
([0, 1, 10, 11, 12]) are the tutorial's.

Truth: nothing is sampled. The guide is a point mass at (w, σ, μ), so the ELBO is the log joint
at that point with the assignments summed exactly,

    log p(X, w, σ, μ) = Σ_n log Σ_k w_k N(x_n | μ_k, σ) + log Dir(w) + log LogNormal(σ) + Σ_k
    log N(μ_k | 0, 10),

per row log Σ_k w_k N(x_n | μ_k, σ), and the posterior of row n's assignment is
p(k | x_n) = w_k N(x_n | μ_k, σ) / Σ_j w_j N(x_n | μ_j, σ) (the responsibilities).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta

from . import Pair

SOURCE = "tutorial/source/gmm.ipynb"
K = 2  # Fixed number of components.
data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


@config_enumerate
def model(data):
    # Global variables.
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))

    with pyro.plate("data", len(data)):
        # Local variables.
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def init_loc_fn(site):
    if site["name"] == "weights":
        # Initialize weights to uniform.
        return torch.ones(K) / K
    if site["name"] == "scale":
        return (data.var() / 2).sqrt()
    if site["name"] == "locs":
        return torch.tensor([0.5, 11.0])
    raise ValueError(site["name"])


def map_point(guide) -> dict[str, torch.Tensor]:
    """The guide's point (w, σ, μ), detached."""
    with torch.no_grad():
        return {k: v.detach() for k, v in guide(data).items()}


def component_log_joint(guide) -> torch.Tensor:
    """log w_k + log N(x_n | μ_k, σ) at the guide's point, ``(N, K)``."""
    point = map_point(guide)
    normal = dist.Normal(point["locs"], point["scale"])
    return point["weights"].log() + normal.log_prob(data[:, None])


def responsibilities(guide) -> torch.Tensor:
    """p(assignment_n = k | x_n) at the guide's point, ``(N, K)``."""
    return component_log_joint(guide).softmax(-1)


def row_log_evidence(guide) -> torch.Tensor:
    """log Σ_k w_k N(x_n | μ_k, σ) per row at the guide's point."""
    return torch.logsumexp(component_log_joint(guide), -1)


def log_joint(guide) -> float:
    """log p(X, w, σ, μ) at the guide's point (module doc)."""
    point = map_point(guide)
    prior = (
        dist.Dirichlet(0.5 * torch.ones(K)).log_prob(point["weights"])
        + dist.LogNormal(0.0, 2.0).log_prob(point["scale"])
        + dist.Normal(0.0, 10.0).log_prob(point["locs"]).sum()
    )
    return float(row_log_evidence(guide).sum() + prior)


def pair() -> Pair:
    guide = AutoDelta(
        poutine.block(model, expose=["weights", "locs", "scale"]),
        init_loc_fn=init_loc_fn,
    )
    return Pair(
        name="gmm",
        source=SOURCE,
        model=model,
        guide=guide,
        data=data,
        global_sites=("weights", "scale", "locs"),
        broadcasts=False,  # locs[assignment] indexes the particle dim under a particle plate
        exact_log_evidence=lambda: log_joint(guide),
        exact_row_log_evidence=lambda: row_log_evidence(guide),
    )
