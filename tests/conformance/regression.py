"""Bayesian linear regression, from pyro-ppl/pyro ``tutorial/source/bayesian_regression.ipynb``
(the ``BayesianRegression`` PyroModule, its ``AutoDiagonalNormal`` guide and the
``cont_africa``/``rugged``/``cont_africa_x_rugged`` design).

What was changed:

- data: synthetic instead of the downloaded rugged-terrain table: 170 rows, the same three
  columns (``cont_africa`` ~ Bernoulli(0.3), ``rugged`` ~ Exponential(mean 1.2), and their
  product), y = X w + b + σ ε with w = (−1.9, −0.2, 0.4), b = 9.2, σ = 0.95, seed 0;
- the ``PyroModule[nn.Linear]`` with ``PyroSample`` weight and bias is written out as two
  sample sites ``w`` (Normal(0, 1) per weight, as the tutorial's weight prior) and ``b``
  (Normal(0, 10), the tutorial's bias prior), and ``mean = (x * w).sum(-1) + b`` instead of
  ``self.linear(x).squeeze(-1)``, so that the model broadcasts over a leading particle
  dimension (``nn.Linear`` does not take a batch of weight matrices);
- the known-noise model (:func:`model`) fixes σ (keyword ``sigma``, default 0.95) so that the
  evidence is closed-form; :func:`latent_noise_model` keeps the tutorial's
  ``sigma ~ Uniform(0, 10)`` (first site, as there);
- guides: every autoguide class, and an ``AutoGuideList`` (AutoNormal on ``w`` (and
  ``sigma``) + AutoDelta on ``b``, each on a ``poutine.block``-ed model); defaults except
  AutoLowRankMultivariateNormal ``rank=2`` and AutoIAFNormal ``hidden_dim=[8]``,
  ``num_transforms=1`` (4 latent dims);
  :func:`make_exact_posterior_guide` builds a guide that draws from the exact posterior.

Truths of the known-noise model, θ = (w, b), A = [X, 1], S₀ = diag(1, 1, 1, 100):

- log p(Y) = log N(Y | 0, A S₀ Aᵀ + σ² I);
- p(θ | Y) = N(μ, Σ), Σ = (S₀⁻¹ + AᵀA/σ²)⁻¹, μ = Σ AᵀY/σ²;
- at the mode μ, log p(Y, μ) = log p(Y) + log N(μ | μ, Σ) (the ELBO of an AutoDelta there);
- the best mean-field Gaussian (AutoNormal, AutoDiagonalNormal) has means μ and standard
  deviations 1/sqrt(diag Σ⁻¹).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import autoguide

from . import Pair

SOURCE = "tutorial/source/bayesian_regression.ipynb"
N, D = 170, 3
NOISE_SD = 0.95
WEIGHT_SD, BIAS_SD = 1.0, 10.0
W_TRUE = (-1.9, -0.2, 0.4)
B_TRUE = 9.2

AUTOGUIDES = (
    "AutoDelta",
    "AutoNormal",
    "AutoDiagonalNormal",
    "AutoMultivariateNormal",
    "AutoLowRankMultivariateNormal",
    "AutoIAFNormal",
    "AutoGuideList",
)
DELTA_GUIDES = ("AutoDelta", "AutoGuideList")  # a point mass somewhere: not a lower bound


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cont_africa = (torch.rand(N, generator=g) < 0.3).float()
    rugged = -1.2 * torch.log(torch.rand(N, generator=g))
    x = torch.stack([cont_africa, rugged, cont_africa * rugged], dim=-1)
    y = x @ torch.tensor(W_TRUE) + B_TRUE + NOISE_SD * torch.randn(N, generator=g)
    return x, y


def model(x, y=None, sigma=NOISE_SD):
    """y = x·w + b + σ ε with σ known."""
    w = pyro.sample("w", dist.Normal(0.0, WEIGHT_SD).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, BIAS_SD))
    mean = (x * w).sum(-1) + b
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
    return mean


def latent_noise_model(x, y=None):
    """The tutorial's model: ``sigma ~ Uniform(0, 10)``."""
    return model(x, y, sigma=pyro.sample("sigma", dist.Uniform(0.0, 10.0)))


def make_autoguide(name: str, fn=model):
    if name == "AutoGuideList":
        guide = autoguide.AutoGuideList(fn)
        normal = ["w", "sigma"] if fn is latent_noise_model else ["w"]
        guide.append(autoguide.AutoNormal(poutine.block(fn, expose=normal)))
        guide.append(autoguide.AutoDelta(poutine.block(fn, expose=["b"])))
        return guide
    if name == "AutoLowRankMultivariateNormal":
        return autoguide.AutoLowRankMultivariateNormal(fn, rank=2)
    if name == "AutoIAFNormal":
        return autoguide.AutoIAFNormal(fn, hidden_dim=[8], num_transforms=1)
    return getattr(autoguide, name)(fn)


# --- the truths (float64, from the data alone) ----------------------------------------------


def _design(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def _prior_cov(dim: int) -> torch.Tensor:
    return torch.diag(torch.tensor([WEIGHT_SD**2] * (dim - 1) + [BIAS_SD**2], dtype=torch.float64))


def exact_log_evidence(x, y, sigma: float = NOISE_SD) -> float:
    a = _design(x)
    cov = a @ _prior_cov(a.shape[1]) @ a.T + sigma**2 * torch.eye(a.shape[0], dtype=a.dtype)
    return float(dist.MultivariateNormal(torch.zeros_like(y.double()), cov).log_prob(y.double()))


def exact_posterior(x, y, sigma: float = NOISE_SD) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D + 1,) and covariance of θ = (w, b) given Y, float64."""
    a = _design(x)
    precision = torch.linalg.inv(_prior_cov(a.shape[1])) + a.T @ a / sigma**2
    cov = torch.linalg.inv(precision)
    mean = cov @ a.T @ y.double() / sigma**2
    return mean, cov


def mean_field_sd(x, y, sigma: float = NOISE_SD) -> torch.Tensor:
    """Standard deviations of the KL(q‖p)-optimal fully factorized Gaussian."""
    _, cov = exact_posterior(x, y, sigma)
    return torch.linalg.inv(cov).diagonal().rsqrt()


def map_log_joint(x, y, sigma: float = NOISE_SD) -> float:
    """log p(Y, θ̂) at the posterior mode θ̂ = μ: log p(Y) + log N(μ | μ, Σ). It is the ELBO of
    a point mass (AutoDelta) at the mode, and exceeds log p(Y) here (Σ is small)."""
    mean, cov = exact_posterior(x, y, sigma)
    peak = dist.MultivariateNormal(mean, covariance_matrix=cov).log_prob(mean)
    return exact_log_evidence(x, y, sigma) + float(peak)


def set_autodelta_to_mode(guide, x, y, sigma: float = NOISE_SD) -> None:
    """Put an AutoDelta guide of :func:`model` at the posterior mode (creating its params)."""
    mean, _ = exact_posterior(x, y, sigma)
    guide(x, y)
    with torch.no_grad():
        guide.w.copy_(mean[:-1].float())
        guide.b.copy_(mean[-1].float())


def make_exact_posterior_guide(x, y, sigma: float = NOISE_SD):
    """A guide equal to p(w, b | Y): w ~ N(μ_w, Σ_ww), b | w ~ N(μ_b + Σ_bw Σ_ww⁻¹ (w − μ_w),
    Σ_bb − Σ_bw Σ_ww⁻¹ Σ_wb). It has no parameters; log p(Y, θ) − log q(θ) = log p(Y) for
    every draw, so its ELBO is the exact evidence with zero variance."""
    mean, cov = exact_posterior(x, y, sigma)
    d = mean.shape[0] - 1
    coef = torch.linalg.solve(cov[:d, :d], cov[:d, d])  # Σ_ww⁻¹ Σ_wb
    b_sd = (cov[d, d] - cov[d, :d] @ coef).sqrt()
    mu_w, cov_w = mean[:d].float(), cov[:d, :d].float()
    mu_b, coef, b_sd = float(mean[d]), coef.float(), float(b_sd)

    def exact_posterior_guide(x, y=None, sigma=NOISE_SD):
        w = pyro.sample("w", dist.MultivariateNormal(mu_w, covariance_matrix=cov_w))
        pyro.sample("b", dist.Normal(mu_b + ((w - mu_w) * coef).sum(-1), b_sd))

    return exact_posterior_guide


# --- the pairs --------------------------------------------------------------------------------


def known_noise(guide: str = "AutoNormal", *, sigma: float | None = None) -> Pair:
    """The known-noise pair with autoguide ``guide`` (or ``"exact"``: the exact posterior).
    ``sigma``: pass a noise sd other than the default through ``model_kwargs``."""
    x, y = make_data()
    kwargs = None if sigma is None else {"sigma": sigma}
    s = NOISE_SD if sigma is None else sigma
    g = make_exact_posterior_guide(x, y, s) if guide == "exact" else make_autoguide(guide)
    mean, cov = exact_posterior(x, y, s)
    return Pair(
        name=f"regression[{guide}]",
        source=SOURCE,
        model=model,
        guide=g,
        data=(x, y),
        model_kwargs=kwargs,
        global_sites=("w", "b"),
        exact_log_evidence=lambda: exact_log_evidence(x, y, s),
        extras={
            "map_log_joint": map_log_joint(x, y, s),
            "posterior_mean": mean,
            "posterior_cov": cov,
            "mean_field_sd": mean_field_sd(x, y, s),
            "is_bound": guide not in DELTA_GUIDES,
        },
    )


def latent_noise(guide: str = "AutoNormal") -> Pair:
    """The tutorial's ``sigma ~ Uniform(0, 10)`` model: no closed form (Pyro is the reference).
    Autoguides put ``*_unconstrained`` / ``_Auto*_latent`` auxiliary sites in the guide and a
    Delta with a log-Jacobian ``log_density`` at ``sigma``."""
    x, y = make_data()
    return Pair(
        name=f"regression_latent_noise[{guide}]",
        source=SOURCE,
        model=latent_noise_model,
        guide=make_autoguide(guide, latent_noise_model),
        data=(x, y),
        global_sites=("sigma", "w", "b"),
        extras={"is_bound": guide not in DELTA_GUIDES},
    )
