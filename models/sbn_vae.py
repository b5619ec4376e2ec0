"""A two-layer sigmoid belief net (Neal 1992) with an amortized guide, as trained by NVIL
(Mnih & Gregor 2014, "Neural variational inference and learning in belief networks").

p(h2) = Π_j Bernoulli(σ(a_j)),  p(h1|h2) = Π_i Bernoulli(σ(W₁ h2 + c₁)_i),
p(x|h1) = Π_d Bernoulli(σ(W₀ h1 + c₀)_d),
q(h1|x) = Π_i Bernoulli(σ(V₁ x + d₁)_i),  q(h2|h1) = Π_j Bernoulli(σ(V₂ h1 + d₂)_j).

Every latent is a binary vector with 2^16 and 2^8 values per row, too many to enumerate, so the
encoder's gradient is a score-function one. Under ``estimator="graph"`` (``TraceGraph_ELBO``)
h2's learning signal holds only the terms downstream of it, log p(h2) + log p(h1|h2) −
log q(h2|h1), not log p(x|h1) − log q(h1|x); ``"graph_avg"`` subtracts a decaying-average
baseline from both layers' signals. ``"analytic"``, ``"iwae"``, ``"dreg"`` and ``"enum"``
refuse the pair (no ``rsample``; nothing marked for enumeration).
"""

import pyro
import pyro.distributions as dist
from torch import nn

from ppl_vae import ModelGuidePair


def make_pair(x_dim: int = 64, h1_dim: int = 16, h2_dim: int = 8) -> ModelGuidePair:
    generative = nn.ModuleDict({"h1": nn.Linear(h2_dim, h1_dim), "x": nn.Linear(h1_dim, x_dim)})
    recognition = nn.ModuleDict({"h1": nn.Linear(x_dim, h1_dim), "h2": nn.Linear(h1_dim, h2_dim)})

    def model(x):
        pyro.module("generative", generative)
        prior = pyro.param("prior_logits", lambda: x.new_zeros(h2_dim))
        with pyro.plate("data", x.shape[0]):
            h2 = pyro.sample("h2", dist.Bernoulli(logits=prior).to_event(1))
            h1 = pyro.sample("h1", dist.Bernoulli(logits=generative["h1"](h2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=generative["x"](h1)).to_event(1), obs=x)

    def guide(x):
        pyro.module("recognition", recognition)
        with pyro.plate("data", x.shape[0]):
            h1 = pyro.sample("h1", dist.Bernoulli(logits=recognition["h1"](x)).to_event(1))
            pyro.sample("h2", dist.Bernoulli(logits=recognition["h2"](h1)).to_event(1))

    return ModelGuidePair(
        model,
        guide,
        name="sbn_vae",
        modules=(generative, recognition),
        x_dim=x_dim,
        binary=True,
    )
