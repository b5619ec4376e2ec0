r"""Estimate and gradient variance at fixed parameters, against closed forms.

The 1-D Normal–Normal toy: p(z) = N(0, 1), p(x|z) = N(z, 1), one datapoint x, and a free guide
q(z) = N(m, s²) with z = m + s ε, ε ~ N(0, 1). Up to constants, per draw,

- sampled:  f = −½(x − z)² − ½z² + ½ε² + log s   (log q(z) = −½ε² − log s − ½ log 2π),
- analytic: f = −½(x − z)² − KL,  KL = ½(m² + s² − 1) − log s.

Differentiating along the path z = m + s ε (Pyro differentiates log q through z as well):

- sampled:  ∂f/∂m = x − 2m − 2sε,            Var = 4s²;
            ∂f/∂s = (x − 2m)ε − 2sε² + 1/s,  Var = (x − 2m)² + 8s²  (Var ε² = 2, E ε³ = 0);
- analytic: ∂f/∂m = x − 2m − sε,             Var = s²;
            ∂f/∂s = (x − m)ε − sε² − s + 1/s, Var = (x − m)² + 2s².

"stl" (sticking the landing) drops the score term ∂ log q(z; m, s)/∂(m, s) at fixed z and keeps
only the path term ∂ log q/∂z · ∂z/∂(m, s) = −(ε/s, ε²/s):

- stl:      ∂f/∂m = x − 2m − 2sε + ε/s,          Var = (1/s − 2s)²;
            ∂f/∂s = (x − 2m)ε + (1/s − 2s)ε²,    Var = (x − 2m)² + 2(1/s − 2s)²,

both zero at the exact posterior q = N(x/2, 1/2) (m = x/2, 2s² = 1), where the sampled
gradient still has Var[∂f/∂m] = 4s² = 2.

Pyro stores s unconstrained as ρ = log s, so ∂f/∂ρ = s ∂f/∂s and its variance is s² times the
above. The KL term: sampled log q − log p = −½ε² − log s + ½z², with mean KL(q‖p) exactly.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import config_enumerate

from ppl_vae.estimators.estimators import STLTrace_ELBO
from ppl_vae.evaluation.variance import (
    estimate_draws,
    gradient_draws,
    gradient_variance,
    param_groups,
)
from ppl_vae.pair.traces import run_pair
from ppl_vae.utils.errors import EstimatorError

X, M, S = 1.5, 0.3, 0.7


def toy_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def toy_guide(x):
    m = pyro.param("m", torch.tensor(M))
    s = pyro.param("s", torch.tensor(S), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(m, s))


def closed_form_variances() -> dict[tuple[str, str], float]:
    return {
        ("sampled", "m"): 4 * S**2,
        ("sampled", "s"): S**2 * ((X - 2 * M) ** 2 + 8 * S**2),
        ("analytic", "m"): S**2,
        ("analytic", "s"): S**2 * ((X - M) ** 2 + 2 * S**2),
        ("stl", "m"): (1 / S - 2 * S) ** 2,
        ("stl", "s"): S**2 * ((X - 2 * M) ** 2 + 2 * (1 / S - 2 * S) ** 2),
    }


def test_gradient_variance_matches_closed_form_on_normal_normal_toy():
    x = torch.tensor([X])
    num_draws = 20000
    draws = gradient_draws(
        toy_model, toy_guide, x, ("sampled", "analytic", "stl"), num_draws, chunk=50, seed=1
    )
    table = gradient_variance(
        toy_model,
        toy_guide,
        x,
        ("sampled", "analytic", "stl"),
        num_draws=num_draws,
        groups={"m": ["m"], "s": ["s"]},
        chunk=50,
        seed=1,
    )
    for (estimator, name), truth in closed_form_variances().items():
        g = draws[estimator][name].double()
        measured = float(g.var())
        # standard error of a sample variance: sd of the squared deviations over sqrt(R)
        se = float(((g - g.mean()) ** 2).std()) / math.sqrt(num_draws)
        assert abs(measured - truth) < 4 * se, (estimator, name, measured, truth, se)
        row = table.set_index(["estimator", "param_group"]).loc[(estimator, name)]
        assert row["variance"] == pytest.approx(measured, rel=1e-9)
    # the mean gradient of the loss −f is exact: −E ∂f/∂m = −(x − 2m) for both estimators
    for estimator in ("sampled", "analytic", "stl"):
        g = draws[estimator]["m"].double()
        assert abs(float(g.mean()) + (X - 2 * M)) < 4 * float(g.std()) / math.sqrt(num_draws)


def test_single_draw_gradient_is_pyros_gradient():
    """With one draw and the same seed, the per-draw gradient is what Pyro's ELBO computes."""
    from models.bernoulli_vae import make_pair

    model, guide = make_pair(x_dim=6, z_dim=2, hidden=5)
    x = (torch.rand(4, 6) > 0.5).float()
    ours = gradient_draws(model, guide, x, ("sampled", "analytic", "stl"), 1, seed=3)
    for estimator, elbo in (
        ("sampled", pyro.infer.Trace_ELBO),
        ("analytic", pyro.infer.TraceMeanField_ELBO),
        ("stl", STLTrace_ELBO),
    ):
        pyro.set_rng_seed(3)
        loss = elbo(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
        with pyro.poutine.trace(param_only=True) as capture:
            loss.loss_and_grads(model, guide, x)
        for name, site in capture.trace.nodes.items():
            p = site["value"].unconstrained()
            torch.testing.assert_close(ours[estimator][name][0], p.grad)
            p.grad = None


def test_sampled_kl_is_unbiased_for_analytic_kl():
    from models.bernoulli_vae import make_pair

    model, guide = make_pair(x_dim=64, z_dim=4, hidden=16)
    x = (torch.rand(32, 64) > 0.5).float()
    draws = estimate_draws(model, guide, x, ("sampled", "analytic"), 4000, seed=0)
    sampled = draws[draws.estimator == "sampled"]
    analytic = draws[draws.estimator == "analytic"]
    # closed-form KL is the same in every draw: no variance in the KL term given x
    assert analytic["kl"].std() == pytest.approx(0.0, abs=1e-6)
    assert analytic["kl"].iloc[0] > 0.01
    se = sampled["kl"].std() / math.sqrt(len(sampled))
    assert abs(sampled["kl"].mean() - analytic["kl"].iloc[0]) < 4 * se
    # same draws: reconstruction agrees, so ELBO − (−KL) is identical per draw
    recon_s = sampled["elbo"].to_numpy() + sampled["kl"].to_numpy()
    recon_a = analytic["elbo"].to_numpy() + analytic["kl"].to_numpy()
    assert recon_s == pytest.approx(recon_a, abs=1e-4)


def test_param_groups_split_encoder_and_decoder():
    from models.linear_gaussian import make_pair

    model, guide = make_pair(x_dim=5, z_dim=2)
    groups = param_groups(run_pair(model, guide, torch.randn(3, 5)))
    assert sorted(groups["encoder"]) == ["A", "b", "s"]
    assert sorted(groups["decoder"]) == ["W", "mu", "sigma"]


def _bernoulli_pair(enumerate_guide: bool):
    """p(c) = Bernoulli(½), p(x|c) = N(c, 1) per row; q(c) = Bernoulli(p), p a free param."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.3), constraint=constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(p))

    return model, config_enumerate(guide) if enumerate_guide else guide


def test_score_function_and_enumerated_gradients_against_the_exact_one():
    """A discrete guide site: 'sampled' takes Pyro's score-function gradient (unbiased, noisy),
    'enum' the exact one (zero variance); both against the gradient of the closed-form ELBO
    Σ_n Σ_c q(c)[log p(c) + log N(x_n | c, 1) − log q(c)] in the unconstrained parameter;
    'analytic' and 'iwae' are refused before any draw, naming the way out."""
    x = torch.tensor([-0.5, 0.3, 1.2, 2.0])
    model, guide = _bernoulli_pair(enumerate_guide=True)
    guide(x)
    unconstrained = pyro.get_param_store()._params["p"]
    p = pyro.param("p")
    q = torch.stack([1 - p, p])
    c = torch.tensor([0.0, 1.0])
    log_joint = math.log(0.5) + dist.Normal(c[:, None], 1.0).log_prob(x)
    exact_elbo = (q[:, None] * (log_joint - q.log()[:, None])).sum()
    (exact,) = torch.autograd.grad(-exact_elbo, unconstrained)
    draws = gradient_draws(model, guide, x, ["sampled", "enum"], 4000, seed=0)
    sampled, summed = draws["sampled"]["p"], draws["enum"]["p"]
    assert summed.std() < 1e-6 and summed.mean() == pytest.approx(float(exact), abs=1e-5)
    se = float(sampled.std()) / math.sqrt(len(sampled))
    assert abs(float(sampled.mean()) - float(exact)) < 4 * se, (sampled.mean(), se, exact)
    assert sampled.std() > 0.1  # the score-function noise the exact sum removes
    with pytest.raises(EstimatorError, match=r"c \(q=Bernoulli\) are not reparameterized.*'enum'"):
        gradient_variance(model, guide, x, ("sampled", "analytic"), num_draws=4)
    with pytest.raises(EstimatorError, match=r"c \(q=Bernoulli\) .* which the iwae"):
        gradient_variance(model, guide, x, ("sampled", "iwae"), num_draws=4)


def test_stl_gradient_vanishes_at_the_exact_posterior():
    """At q = p(z|x) = N(x/2, 1/2) the path-derivative gradient is exactly zero in every draw;
    the sampled one is not (Var ∂f/∂m = 4s² = 2)."""

    def guide(x):
        m = pyro.param("m", torch.tensor(X / 2))
        s = pyro.param("s", torch.tensor(0.5**0.5), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, s))

    table = gradient_variance(
        toy_model, guide, torch.tensor([X]), ("sampled", "stl"), 400, groups={"m": ["m"]}
    ).set_index("estimator")
    assert table.loc["stl", "variance"] < 1e-10
    assert table.loc["sampled", "variance"] == pytest.approx(2.0, rel=0.25)
