"""Simulation-based calibration against known truths: pPCA with its exact posterior as guide
(ranks uniform), the same guide made too wide, too narrow or shifted (each flagged as such),
pairs written as Pyro users write them, discrete latents, global latents, and the tests'
own false-alarm rate on ranks drawn uniform by numpy.

Every call is seeded, so each test is deterministic; the stated false-alarm rate is the
probability, over seeds, that a calibrated guide is flagged at all: alpha = 0.05.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.util
import pytest
import torch
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoNormal

from models import linear_gaussian
from ppl_vae import PairError, PplVaeError, arviz_compat, calibration
from ppl_vae.diagnostics.ranks import (
    CALIBRATED,
    TOO_HIGH,
    TOO_LOW,
    TOO_NARROW,
    TOO_WIDE,
    ecdf_difference,
    uniformity,
)

X_DIM, Z_DIM = 5, 2


def ppca(scale_factor: float = 1.0, shift: float = 0.0):
    """pPCA whose W has orthogonal columns, so that the diagonal Gaussian guide set to the
    posterior is exact; then its scales multiplied by ``scale_factor`` and its mean of z[0]
    moved by ``shift`` posterior standard deviations."""
    pair = linear_gaussian.make_pair(x_dim=X_DIM, z_dim=Z_DIM)
    x = torch.randn(300, X_DIM)
    pair.model(x), pair.guide(x)
    store = pyro.get_param_store()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM))
        store["W"].copy_(q * torch.tensor([2.0, 0.7]))
        store["mu"].copy_(torch.randn(X_DIM))
        store["sigma"].unconstrained().copy_(torch.tensor(0.8).log())
    linear_gaussian.set_guide_to_posterior()
    assert float(linear_gaussian.kl_to_posterior(x).abs().max()) < 1e-5  # q is p(z|x)
    with torch.no_grad():
        s = store["s"].detach()
        store["b"].unconstrained().add_(s * torch.tensor([shift, 0.0]))
        store["s"].unconstrained().add_(torch.tensor(scale_factor).log())
    return pair, x


def test_exact_posterior_guide_is_calibrated():
    pair, x = ppca()
    result = calibration(*pair, x, seed=1)
    assert result.ranks.shape == (1000, 2) and list(result.ranks.columns) == ["z[0]", "z[1]"]
    assert result.ranks.min().min() >= 0 and result.ranks.max().max() <= 99
    assert (result.tests["verdict"] == CALIBRATED).all(), result.tests
    assert result.settings["threshold"] == pytest.approx(0.05 / 6)
    assert "2 of 2 coordinates calibrated" in result.verdict


@pytest.mark.parametrize(
    "factor, shift, expected",
    [
        (2.0, 0.0, [TOO_WIDE, TOO_WIDE]),
        (0.5, 0.0, [TOO_NARROW, TOO_NARROW]),
        (1.0, 0.5, [TOO_HIGH, CALIBRATED]),
        (1.0, -0.5, [TOO_LOW, CALIBRATED]),
        # the smallest errors docs/diagnostics.md says the default 1000 simulations detect
        (1.2, 0.0, [TOO_WIDE, TOO_WIDE]),
        (1 / 1.2, 0.0, [TOO_NARROW, TOO_NARROW]),
        (1.0, 0.15, [TOO_HIGH, CALIBRATED]),
    ],
)
def test_miscalibrated_guides_are_flagged(factor, shift, expected):
    pair, x = ppca(factor, shift)
    result = calibration(*pair, x, seed=2)
    assert list(result.tests["verdict"]) == expected, result.tests


def test_false_alarm_rate_of_the_tests_is_at_most_alpha():
    """Ranks drawn uniform on {0..L} directly: the share of families with any flag is at
    most alpha = 0.05 (400 families, so within 3 binomial standard errors of it)."""
    rng = np.random.default_rng(0)
    flagged = [
        (uniformity(rng.integers(0, 100, (1000, 3)), 99, ["a", "b", "c"])["verdict"]
         != CALIBRATED).any()
        for _ in range(400)
    ]
    assert np.mean(flagged) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)


def test_ecdf_band_is_simultaneous():
    """ECDFs of uniform ranks leave the 95% band anywhere in about 5% of samples (the band is
    simultaneous; pointwise bands would be left far more often)."""
    rng = np.random.default_rng(1)
    band = ecdf_difference(rng.integers(0, 50, (200, 1)), 49)
    differences = ecdf_difference(rng.integers(0, 50, (200, 400)), 49)["difference"]
    outside = ((differences < band["lower"][:, None] - 1e-12)
               | (differences > band["upper"][:, None] + 1e-12)).any(0)
    assert 0.01 <= outside.mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)


def test_native_and_simulated_bands_agree():
    points = np.arange(1, 100) / 100
    native = arviz_compat.ecdf_band(500, points, 0.95)
    simulated = arviz_compat.simulated_ecdf_band(500, points, 0.95, seed=3)
    np.testing.assert_allclose(native, simulated, atol=0.01)


def linear_vae():
    """pPCA written the way Pyro users write a VAE: ``pyro.module`` networks, a data plate of
    ``x.shape[0]``, ``.to_event(1)``; the encoder set to the exact posterior."""
    decoder, encoder = torch.nn.Linear(Z_DIM, X_DIM), torch.nn.Linear(X_DIM, Z_DIM)
    log_scale = torch.nn.Parameter(torch.zeros(Z_DIM))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        scale = pyro.param("log_scale", log_scale).exp()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), scale).to_event(1))

    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM))
        W = q * torch.tensor([1.5, 0.6])
        decoder.weight.copy_(W)
        decoder.bias.copy_(torch.randn(X_DIM))
        M = W.T @ W + 0.25 * torch.eye(Z_DIM)  # diagonal: the posterior is diagonal
        encoder.weight.copy_(torch.linalg.solve(M, W.T))
        encoder.bias.copy_(-encoder.weight @ decoder.bias)
        log_scale.copy_((0.5 / torch.diagonal(M).sqrt()).log())
    return model, guide, log_scale


def test_user_written_vae_pair():
    model, guide, log_scale = linear_vae()
    x = torch.randn(50, X_DIM)
    assert (calibration(model, guide, x, seed=0).tests["verdict"] == CALIBRATED).all()
    with torch.no_grad():
        pyro.get_param_store()["log_scale"].add_(np.log(2.0))
    assert (calibration(model, guide, x, seed=0).tests["verdict"] == TOO_WIDE).all()


def covariate_pair(transform_obs: bool = False):
    """model(c, x): z ~ N(0, 1), x ~ N(z + c, 1); the exact posterior N((x − c)/2, 1/2)."""

    def model(c, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(c), 1.0))
            pyro.sample("x", dist.Normal(z + c, 1.0), obs=2 * x if transform_obs else x)

    def guide(c, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal((x - c) / 2, 0.5**0.5))

    return model, guide


def test_covariates_are_kept_and_observations_simulated():
    """The covariate c comes from the template rows (large, so that a simulated x ignoring
    it, or c replaced, would bias every rank), the observation x is simulated."""
    model, guide = covariate_pair()
    c, x = 10 * torch.randn(400), torch.zeros(400)
    result = calibration(model, guide, (c, x), num_simulations=500, seed=0)
    assert list(result.ranks.columns) == ["z"]
    assert (result.tests["verdict"] == CALIBRATED).all(), result.tests
    result = calibration(model, guide, {"c": c, "x": x}, num_simulations=500, seed=0)
    assert (result.tests["verdict"] == CALIBRATED).all(), result.tests


def test_observation_that_is_not_an_argument_is_refused():
    model, guide = covariate_pair(transform_obs=True)
    with pytest.raises(PairError, match="does not observe one of the per-row arguments"):
        calibration(model, guide, (torch.randn(20), torch.randn(20) + 0.5), seed=0)


def test_discrete_latent_ties_are_broken_at_random():
    """z ~ Bernoulli(0.3), x ~ N(2z, 1), q the exact posterior Bernoulli: ranks of a 0/1
    latent among 0/1 draws are mostly ties; broken at random they are uniform."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.3 * torch.ones_like(x)))
            pyro.sample("x", dist.Normal(2 * z, 1.0), obs=x)

    def guide(x):
        log_odds = np.log(0.3 / 0.7) + 2 * x - 2  # log p(x|1) − log p(x|0) = 2x − 2
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=log_odds))

    result = calibration(model, guide, torch.randn(100), seed=0)
    assert (result.tests["verdict"] == CALIBRATED).all(), result.tests

    def prior_guide(x):  # q = p(z): calibrated too, which SBC cannot tell from p(z|x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(0.3 * torch.ones_like(x)))

    assert (calibration(model, prior_guide, torch.randn(100), seed=0).tests["verdict"]
            == CALIBRATED).all()

    def overconfident(x):  # the posterior's log odds tripled
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=3 * (np.log(0.3 / 0.7) + 2 * x - 2)))

    assert (calibration(model, overconfident, torch.randn(100), seed=0).tests["verdict"]
            == TOO_NARROW).all()
    # marked for enumeration (an 'enum' guide): q is still drawn from, and the verdicts hold
    for marked, verdict in ((guide, CALIBRATED), (overconfident, TOO_NARROW)):
        result = calibration(model, config_enumerate(marked), torch.randn(100), seed=0)
        assert (result.tests["verdict"] == verdict).all(), result.tests


def test_hierarchical_guide_that_does_not_broadcast():
    """a ~ N(0, 1), b ~ N(a, 1), x ~ N(b, 1); the exact posterior factorized as
    q(a|x) = N(x/3, 2/3) and q(b|a, x) = N((a + x)/2, 1/2), the second computed by a network
    on torch.stack([x, a]), which fails under a particle plate: drawn one at a time."""
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.5), net.bias.zero_()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(torch.zeros_like(x), 1.0))
            b = pyro.sample("b", dist.Normal(a, 1.0))
            pyro.sample("x", dist.Normal(b, 1.0), obs=x)

    def guide(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(x / 3, (2 / 3) ** 0.5))
            loc = net(torch.stack([x, a], -1)).squeeze(-1)
            pyro.sample("b", dist.Normal(loc, 0.5**0.5))

    result = calibration(model, guide, torch.randn(30), num_simulations=500, num_draws=49,
                         seed=0)
    assert list(result.ranks.columns) == ["a", "b"]
    assert (result.tests["verdict"] == CALIBRATED).all(), result.tests
    with torch.no_grad():
        net.bias.fill_(0.5)  # q(b|a, x) shifted up by 0.7 of its sd
    assert list(calibration(model, guide, torch.randn(30), num_simulations=500, num_draws=49,
                            seed=0).tests["verdict"]) == [CALIBRATED, TOO_HIGH]


def global_pair():
    """θ ~ N(0, 1), x_n ~ N(θ, 1), AutoNormal q(θ): a global latent, refitted per simulation."""

    def model(x):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(theta, 1.0), obs=x)

    return model, AutoNormal(model)


def test_global_latents_need_an_explicit_refit():
    model, guide = global_pair()
    with pytest.raises(PairError, match=r"global latents \['theta'\].*refit_steps"):
        calibration(model, guide, torch.randn(10), seed=0)
    with pytest.raises(PairError, match="too many"):
        calibration(model, guide, torch.randn(10), num_simulations=101, refit_steps=5)


def test_global_latents_refitted_per_simulation():
    """20 simulated data sets, q(θ) refitted to each from the same start: the ranks of θ are
    calibrated (q(θ) left at its start for every data set would rank θ at the ends), and the
    param store and the random streams are as before."""
    model, guide = global_pair()
    x = torch.randn(10)
    guide(x)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    rng = pyro.util.get_rng_state()
    result = calibration(model, guide, x, num_simulations=20, num_draws=19, seed=0,
                         refit_steps=150, refit_lr=0.1)
    assert list(result.ranks.columns) == ["theta"] and result.ranks.shape == (20, 1)
    assert result.settings["global_sites"] == ["theta"]
    assert (result.tests["verdict"] == CALIBRATED).all(), result.tests
    ranks = result.ranks["theta"]
    assert ((ranks > 0) & (ranks < 19)).mean() > 0.7
    for name, value in pyro.get_param_store().items():
        torch.testing.assert_close(value.detach(), before[name])
    after = pyro.util.get_rng_state()  # each refit reseeds; the caller's streams come back
    assert after["random"] == rng["random"] and torch.equal(after["torch"], rng["torch"])
    assert np.array_equal(after["numpy"][1], rng["numpy"][1])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_simulations": 0}, "num_simulations must be a positive integer"),
        ({"num_draws": 1.5}, "num_draws must be a positive integer"),
        ({"alpha": 1.0}, r"alpha must lie in \(0, 1\)"),
        ({"seed": -1}, "seed must be an integer"),
    ],
)
def test_bad_arguments(options, message):
    pair, x = ppca()
    with pytest.raises(PplVaeError, match=message):
        calibration(*pair, x, **options)


def test_the_public_name_is_the_function_after_the_command_line_is_imported():
    import ppl_vae
    import ppl_vae.cli.diagnose_run  # noqa: F401  imports the module that runs it

    assert ppl_vae.calibration is calibration and callable(ppl_vae.calibration)
