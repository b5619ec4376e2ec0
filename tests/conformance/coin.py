"""The coin (Beta–Bernoulli), from pyro-ppl/pyro ``tutorial/source/svi_part_i.ipynb``.

What was changed:

- the loop ``for i in range(len(data)): pyro.sample("obs_{}".format(i), ...)`` is vectorized as
  ``with pyro.plate("data", len(data)): pyro.sample("obs", dist.Bernoulli(f), obs=data)``;
- the data (6 heads, 4 tails) is one float tensor of 0/1 instead of a list of scalars.

Everything else is as written there: ``latent_fairness ~ Beta(10, 10)``, the guide
``Beta(alpha_q, beta_q)`` with positive-constrained params initialized at 15.0.

Truths (h heads, t tails, prior Beta(a, b)):

- log p(data) = log B(a + h, b + t) − log B(a, b) (the sequence's probability, not the count's:
  there is no binomial coefficient);
- p(f | data) = Beta(a + h, b + t) = Beta(16, 14); with the guide set to it the ELBO equals
  log p(data) for every draw;
- the ELBO of any guide Beta(α, β) is closed-form too: with E log f = ψ(α) − ψ(α + β),
  E log(1 − f) = ψ(β) − ψ(α + β), ELBO = h E log f + t E log(1 − f) − KL(Beta(α, β) ‖ Beta(a, b)).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import Pair

SOURCE = "tutorial/source/svi_part_i.ipynb"
HEADS, TAILS = 6, 4
ALPHA0, BETA0 = 10.0, 10.0


def make_data() -> torch.Tensor:
    return torch.tensor([1.0] * HEADS + [0.0] * TAILS)


def model(data):
    # define the hyperparameters that control the Beta prior
    alpha0 = torch.tensor(ALPHA0)
    beta0 = torch.tensor(BETA0)
    # sample f from the Beta prior
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    # observe the data with the Bernoulli likelihood (the tutorial's loop, vectorized)
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def exact_log_evidence() -> float:
    return log_beta(ALPHA0 + HEADS, BETA0 + TAILS) - log_beta(ALPHA0, BETA0)


EXACT_POSTERIOR = (ALPHA0 + HEADS, BETA0 + TAILS)


def exact_elbo(alpha_q: float | None = None, beta_q: float | None = None) -> float:
    """The ELBO of the guide Beta(alpha_q, beta_q) (default: the param store's values)."""
    from scipy.special import digamma

    if alpha_q is None:
        alpha_q = float(pyro.param("alpha_q").detach())
        beta_q = float(pyro.param("beta_q").detach())
    a, b, s = alpha_q, beta_q, alpha_q + beta_q
    expected_log_lik = HEADS * (digamma(a) - digamma(s)) + TAILS * (digamma(b) - digamma(s))
    kl = (
        log_beta(ALPHA0, BETA0)
        - log_beta(a, b)
        + (a - ALPHA0) * digamma(a)
        + (b - BETA0) * digamma(b)
        + (ALPHA0 + BETA0 - s) * digamma(s)
    )
    return float(expected_log_lik - kl)


def set_guide_to_posterior() -> None:
    """alpha_q, beta_q ← 16, 14 (creates them if the store does not hold them yet)."""
    store = pyro.get_param_store()
    for name, value in zip(("alpha_q", "beta_q"), EXACT_POSTERIOR, strict=True):
        if name not in store:
            pyro.param(name, torch.tensor(15.0), constraint=constraints.positive)
        with torch.no_grad():
            store[name].unconstrained().copy_(torch.tensor(value).log())


def pair() -> Pair:
    return Pair(
        name="coin",
        source=SOURCE,
        model=model,
        guide=guide,
        data=make_data(),
        global_sites=("latent_fairness",),
        exact_log_evidence=exact_log_evidence,
        extras={"posterior": EXACT_POSTERIOR, "exact_elbo": exact_elbo},
    )
