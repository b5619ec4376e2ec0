"""fit(): training reaches known optima, reports its KL sites, and takes any correct pair."""

import warnings

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import ppl_vae
import ppl_vae.estimators.particles
from models import bernoulli_vae, linear_gaussian, mixture_prior_vae
from ppl_vae.pair.traces import run_pair
from ppl_vae.training.warmup import LatentScale, anneal, kl_weight
from tests.pairs import drifting_scale_pair


@pytest.mark.parametrize("estimator", ["analytic", "sampled"])
def test_ppca_reaches_the_closed_form_maximum_likelihood(digits, estimator):
    """Tipping & Bishop (1999): the ML of pPCA is known in closed form. At the optimum the
    diagonal guide can match the posterior (the ML solution has a rotation with WᵀW
    diagonal), so SVI must reach it: exact log p(x) and the ELBO both within 0.05 nats."""
    x = torch.cat(digits)
    best = linear_gaussian.max_log_likelihood(x, z_dim=2)
    runner_up = linear_gaussian.max_log_likelihood(x, z_dim=1)
    model, guide = linear_gaussian.make_pair(x_dim=64, z_dim=2)
    ppl_vae.fit(
        model, guide, x, estimator=estimator, num_steps=2000, batch_size=x.shape[0],
        optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.999}), seed=0,
    )
    exact = linear_gaussian.exact_log_likelihood(x).mean().item()
    elbo = ppl_vae.evaluate(model, guide, x, num_particles=20, seed=1)["elbo"].mean()
    assert exact <= best + 1e-3  # nothing beats the maximum
    assert best - exact < 0.05 and best - elbo < 0.05
    assert best - runner_up > 3  # the tolerance is small against what a worse model loses


def test_fit_result_history_and_sites(binary_digits):
    model, guide = bernoulli_vae.make_pair()
    result = ppl_vae.fit(model, guide, binary_digits[0], estimator="analytic", num_steps=30,
                         batch_size=100, lr=1e-2, seed=0)
    h = result.history
    assert list(h.columns) == ["step", "epoch", "elbo", "beta", "time_s"]
    assert h["step"].tolist() == list(range(1, 31))
    assert h["epoch"].tolist() == [0] * 14 + [1] * 14 + [2] * 2  # 1438 rows // 100 = 14
    assert h["time_s"].is_monotonic_increasing and (h["beta"] == 1).all()
    assert h["elbo"].iloc[-5:].mean() > h["elbo"].iloc[:5].mean()  # it learns
    assert result.sites.to_dict("records") == [{
        "site": "z", "q": "Independent(Normal)", "p": "Independent(Normal)", "scope": "local",
        "enumerated": "no", "closed_form_available": True, "kl": "closed-form",
    }]
    assert set(result.params) == set(pyro.get_param_store().keys())


def test_analytic_fallback_is_reported_and_strict_raises(binary_digits):
    model, guide = mixture_prior_vae.make_pair()
    with pytest.warns(ppl_vae.KLFallbackWarning, match=r"latent site\(s\) z .*MixtureSameFamily"):
        result = ppl_vae.fit(model, guide, binary_digits[0], estimator="analytic", num_steps=3)
    assert result.sites.loc[0, "kl"] == "sampled"
    assert not result.sites.loc[0, "closed_form_available"]
    terms = ppl_vae.evaluate(model, guide, binary_digits[1][:10], num_particles=5)
    assert terms.attrs["kl_method"] == {"z": "sampled"}
    with pytest.raises(ppl_vae.EstimatorError, match="no closed-form KL .* strict=False"):
        ppl_vae.fit(model, guide, binary_digits[0], estimator="analytic", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sampled estimator has nothing to fall back from
        ppl_vae.fit(model, guide, binary_digits[0], estimator="sampled", num_steps=2)


def test_a_user_written_pair_trains(digits):
    """A pair written here, with two latent sites (one depending on the other)."""
    x = digits[0]
    enc = torch.nn.Linear(64, 4)
    dec = torch.nn.Linear(3, 64)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            v = pyro.sample("v", dist.Normal(u.sum(-1, keepdim=True), 1.0).to_event(1))
            loc = dec(torch.cat([u, v], -1))
            pyro.sample("x", dist.Normal(loc, 0.3).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            h = enc(x)
            pyro.sample("u", dist.Normal(h[..., :2], 0.5).to_event(1))
            pyro.sample("v", dist.Normal(h[..., 2:3], 0.5).to_event(1))

    before = ppl_vae.evaluate(model, guide, x[:200], num_particles=10, seed=0)["elbo"].mean()
    result = ppl_vae.fit(model, guide, x, estimator="analytic", num_steps=300, lr=1e-2)
    after = ppl_vae.evaluate(model, guide, x[:200], num_particles=10, seed=0)
    assert after["elbo"].mean() > before + 50
    assert list(result.sites["site"]) == ["u", "v"] and (result.sites["kl"] == "closed-form").all()
    assert np.allclose(after["kl"], after["kl[u]"] + after["kl[v]"])


def test_autonormal_guide_with_a_global_latent():
    """Pyro's AutoNormal on a model with a global mean and per-datapoint latents."""
    true_mu = 2.0
    x = true_mu + torch.randn(300, 1) * (1 + 0.5**2) ** 0.5

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 0.5).to_event(1), obs=x)

    # AutoNormal needs the full data plate, so fit on all rows at once
    guide = AutoNormal(model)
    result = ppl_vae.fit(model, guide, x, estimator="analytic", num_steps=800,
                         batch_size=300, lr=0.05)
    sites = result.sites.set_index("site")
    # AutoNormal's density lives on auxiliary *_unconstrained sites; the Delta sites are never
    # closed-form (Pyro's KL(Delta||p) would drop their log_density)
    assert sites["kl"].to_dict() == {
        "mu_unconstrained": "sampled (auxiliary)", "mu": "sampled",
        "z_unconstrained": "sampled (auxiliary)", "z": "sampled",
    }
    assert sites["scope"].to_dict() == {
        "mu_unconstrained": "global", "mu": "global", "z_unconstrained": "local", "z": "local"
    }
    median = guide.median(x)
    assert abs(float(median["mu"]) - float(x.mean())) < 0.15
    terms = ppl_vae.evaluate(model, guide, x, num_particles=50, batch_size=300, seed=0)
    # the global site's KL is counted once, in the joint ELBO, not per row
    assert terms.attrs["global_sites"] == ["mu"] and "kl[mu]" not in terms
    joint = terms.attrs["joint"]
    assert joint["elbo"] == pytest.approx(terms["elbo"].sum() - joint["kl_global"])


@pytest.mark.parametrize("data_type", ["numpy", "dataframe"])
def test_data_can_be_numpy_or_dataframe(binary_digits, data_type):
    x = binary_digits[0][:256]
    data = {
        "numpy": x.numpy(),
        "dataframe": pd.DataFrame(x.numpy(), columns=[f"px{i}" for i in range(64)]),
    }[data_type]
    model, guide = bernoulli_vae.make_pair()
    result = ppl_vae.fit(model, guide, data, num_steps=5, batch_size=64)
    assert len(result.history) == 5 and np.isfinite(result.history["elbo"]).all()


def test_integer_data_is_passed_as_given_and_the_error_says_so(binary_digits):
    """Pyro's SVI passes arrays as given, and so does ppl_vae: int64 pixels reach the encoder
    as int64, where torch refuses them; the error says that the arrays were not converted and
    how to convert them."""
    model, guide = bernoulli_vae.make_pair()
    x = binary_digits[0][:256].to(torch.int64)
    with pytest.raises(ppl_vae.PairError, match=r"passed to the pair as given.*torch\.int64.*"
                       r"x\.float\(\)"):  # fmt: skip
        ppl_vae.fit(model, guide, x, num_steps=5, batch_size=64)
    result = ppl_vae.fit(model, guide, x.float(), num_steps=5, batch_size=64)
    assert np.isfinite(result.history["elbo"]).all()


@pytest.mark.parametrize("estimator", ["analytic", "sampled"])
def test_kl_warmup_scales_the_kl_term_of_both_estimators(binary_digits, estimator):
    """With latent sites scaled by β in model and guide: loss(β) − loss(1) = (β − 1)·KL-term
    on the same draw of z (analytic: closed-form KL; sampled: log q − log p)."""
    x = binary_digits[0][:32]
    model, guide = bernoulli_vae.make_pair()
    layout = run_pair(model, guide, x)
    elbo = ppl_vae.estimators.estimators.get(estimator).make(1, layout.max_plate_nesting)
    scale = LatentScale()

    def loss_at(beta):
        scale.beta = beta
        with ppl_vae.utils.rng.seeded(7):
            return elbo.loss(anneal(model, scale), anneal(guide, scale), x)

    with ppl_vae.utils.rng.seeded(7):
        terms = ppl_vae.estimators.particles.particle_terms(model, guide, x, 1, layout)
    kl = terms.kl("z", closed_form=estimator == "analytic").sum().item()
    assert loss_at(0.25) - loss_at(1.0) == pytest.approx(-0.75 * kl, rel=1e-4)
    assert [kl_weight(s, 4) for s in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]


def test_fit_with_warmup_records_beta(binary_digits):
    model, guide = bernoulli_vae.make_pair()
    result = ppl_vae.fit(model, guide, binary_digits[0], num_steps=12, kl_warmup=10)
    assert result.history["beta"].tolist() == [s / 10 for s in range(1, 11)] + [1.0, 1.0]


def test_callback_sees_every_step_and_can_stop(binary_digits):
    model, guide = bernoulli_vae.make_pair()
    seen = []

    def callback(info: ppl_vae.StepInfo):
        seen.append((info.step, info.batch.shape))
        return info.step == 7

    result = ppl_vae.fit(model, guide, binary_digits[0], num_steps=50, batch_size=16,
                         callback=callback)
    assert result.stopped_early and result.num_steps == 7 and len(result.history) == 7
    assert seen == [(s, torch.Size([16, 64])) for s in range(1, 8)]


def test_num_particles_are_vectorized_and_reduce_noise(binary_digits):
    model, guide = bernoulli_vae.make_pair()
    x = binary_digits[0][:64]
    run_pair(model, guide, x)
    spreads = {}
    for particles in (1, 16):
        elbo = ppl_vae.estimators.estimators.get("sampled").make(particles, 1)
        losses = [elbo.loss(model, guide, x) for _ in range(30)]
        spreads[particles] = np.std(losses)
    assert spreads[16] < spreads[1] / 2  # sd ∝ 1/sqrt(particles): expect ≈ 1/4


def test_numerical_fault_names_the_step_and_site_and_keeps_history():
    """An unconstrained scale that Adam pushes through 0 makes log p(x|z) non-finite."""
    x = 0.01 * torch.randn(64, 1, generator=torch.Generator().manual_seed(0))
    model, guide = drifting_scale_pair()
    pyro.enable_validation(False)
    with pytest.raises(ppl_vae.NumericalError, match=r"step \d+: non-finite .*'x'.*lower lr"
                       ) as info:
        ppl_vae.fit(model, guide, x, num_steps=500, batch_size=64, lr=0.5)
    history = info.value.history
    assert 0 < len(history) < 500 and np.isfinite(history["elbo"]).all()
    assert torch.isfinite(pyro.param("scale").detach())  # no NaN was applied to it
