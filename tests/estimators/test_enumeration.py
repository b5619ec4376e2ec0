"""Discrete latents: the ``enum`` estimator and exact sums in evaluation, against closed forms,
exact sums and Pyro's own ``TraceEnum_ELBO``.

Pairs: the GMM tutorial (the model sums ``assignment`` out, AutoDelta globals: nothing is
sampled, so every number is a closed form to float tolerance); an amortized GMM whose guide
enumerates a Categorical (no continuous latent: the summed importance weight is p(x) itself);
a mixture-prior pair whose summed-out class is the parent of a guide site's prior; and the
unsupervised M2 of Pyro's ``ss_vae_M2.py`` (y enumerated in the guide, z continuous).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.ops.indexing import Vindex
from torch import nn
from torch.distributions import constraints

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.estimators.particles import ParticleLoopWarning
from ppl_vae.evaluation.variance import estimate_draws, gradient_variance
from ppl_vae.utils.errors import EstimatorError, PairError, PplVaeError
from tests.conformance import gmm, ss_vae_m2, toy_mixture, within


@pytest.fixture(autouse=True)
def _fresh(fresh_pyro):
    pass


def _quiet(fn, *args, **kwargs):
    """Call ``fn`` with the GMM tutorial's expected ParticleLoopWarning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParticleLoopWarning)
        return fn(*args, **kwargs)


# --- the GMM tutorial: a model-side sum, exact to float tolerance -----------------------------


def test_gmm_tutorial_objective_and_log_likelihood_are_the_exact_mixture_density():
    pair = gmm.pair()
    pair.guide(pair.data)
    start = pair.exact_log_evidence()
    assert -TraceEnum_ELBO(max_plate_nesting=1).loss(pair.model, pair.guide, pair.data) == (
        pytest.approx(start, rel=1e-6))  # the truth agrees with Pyro's own estimator
    result = ppl_vae.fit(pair.model, pair.guide, pair.data, estimator="enum", num_steps=100,
                         lr=0.1)
    # each step's objective is the full-data ELBO / N at the parameters before the step
    assert result.history["elbo"].iloc[0] * 5 == pytest.approx(start, rel=1e-6)
    final = pair.exact_log_evidence()
    assert final > start + 5
    sites = result.sites.set_index("site")
    assert sites.loc["assignment", "enumerated"] == "model"
    assert sites.loc["assignment", "kl"] == "enumerated (exact)"
    assert sites.loc["assignment", "q"] is None or not isinstance(sites.loc["assignment", "q"], str)
    assert (sites.loc[["weights", "scale", "locs"], "scope"] == "global").all()

    with pytest.warns(ParticleLoopWarning):  # locs[assignment] does not take a particle dim
        frame = ppl_vae.evaluate(pair.model, pair.guide, pair.data, num_particles=3,
                                 estimator="enum", seed=0)
    assert frame.attrs["joint"]["elbo"] == pytest.approx(final, abs=1e-4)
    assert frame.attrs["joint"]["elbo_se"] == 0
    assert frame.attrs["kl_method"]["assignment"] == "enumerated (exact)"
    rows = pair.exact_row_log_evidence().numpy()
    np.testing.assert_allclose(frame["elbo"], rows, rtol=1e-6)
    ll = _quiet(ppl_vae.log_likelihood, pair.model, pair.guide, pair.data, num_samples=4)
    np.testing.assert_allclose(ll.to_numpy(), rows, rtol=1e-6)
    assert ll.attrs["joint"] == pytest.approx(final, abs=1e-4)  # a point-mass q(θ): exact


def test_gmm_tutorial_exports_the_responsibilities():
    pair = gmm.pair()
    pair.guide(pair.data)  # at the start the two components overlap: responsibilities in (0, 1)
    truth = gmm.responsibilities(pair.guide).numpy()
    assert ((truth > 0.01) & (truth < 0.99)).any()
    idata = _quiet(ppl_vae.to_inference_data, pair.model, pair.guide, pair.data, num_samples=3)
    probs = idata.posterior["assignment_probs"]
    assert probs.dims == ("chain", "draw", "obs_row", "assignment_support")
    np.testing.assert_allclose(probs.mean(("chain", "draw")).values, truth, rtol=1e-5, atol=1e-6)
    assert "assignment" not in idata.posterior  # summed out, not drawn


def test_gmm_tutorial_refuses_estimators_that_would_sample_the_assignment():
    pair = gmm.pair()
    steps = []
    for estimator in ("sampled", "analytic", "stl"):
        with pytest.raises(EstimatorError, match=r"sums out site\(s\) \['assignment'\].*'enum'"):
            ppl_vae.fit(pair.model, pair.guide, pair.data, estimator=estimator, num_steps=5,
                        callback=steps.append)
    with pytest.raises(PplVaeError, match=r"kl_warmup.*sums out \['assignment'\]"):
        ppl_vae.fit(pair.model, pair.guide, pair.data, estimator="enum", num_steps=5,
                    kl_warmup=3, callback=steps.append)
    assert steps == []
    with pytest.raises(EstimatorError, match="sums out"):
        estimate_draws(pair.model, pair.guide, pair.data, ["sampled"], 3)


# --- an amortized GMM: the guide enumerates a Categorical ---------------------------------------


K, D = 3, 2
LOCS = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 3.0]])


def amortized_gmm():
    encoder = nn.Linear(D, K)
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[-0.8, 0.1], [0.7, -0.2], [0.0, 0.6]]))
        encoder.bias.zero_()

    def model(x):
        weights = pyro.param("weights", torch.tensor([0.5, 0.3, 0.2]),
                             constraint=constraints.simplex)
        locs = pyro.param("locs", LOCS.clone())
        scale = pyro.param("scale", torch.tensor(1.2), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(weights))
            pyro.sample("x", dist.Normal(Vindex(locs)[y], scale).to_event(1), obs=x)

    @config_enumerate
    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=encoder(x)))

    return model, guide, encoder


def gmm_data(n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, K, (n,), generator=g)
    return LOCS[y] + 1.2 * torch.randn(n, D, generator=g)


def gmm_truth(x: torch.Tensor, encoder: nn.Module):
    """(log p(x_n), ELBO_n, KL(q(y|x_n) ‖ p(y))) in closed form at the current parameters."""
    with torch.no_grad():
        w, locs, scale = pyro.param("weights"), pyro.param("locs"), pyro.param("scale")
        log_joint = w.log() + dist.Normal(locs, scale).to_event(1).log_prob(x[:, None, :])
        q = encoder(x).log_softmax(-1)
        elbo = (q.exp() * (log_joint - q)).sum(-1)
        kl = (q.exp() * (q - w.log())).sum(-1)
        return torch.logsumexp(log_joint, -1), elbo, kl


def test_amortized_gmm_enum_is_exact_and_sampled_agrees_in_expectation():
    model, guide, encoder = amortized_gmm()
    x = gmm_data()
    guide(x), model(x)
    log_px, elbo, kl = gmm_truth(x, encoder)
    summed = ppl_vae.evaluate(model, guide, x, num_particles=2, estimator="enum")
    np.testing.assert_allclose(summed["elbo"], elbo, rtol=1e-5)
    np.testing.assert_allclose(summed["kl[y]"], kl, rtol=1e-5, atol=1e-6)
    assert summed["elbo_se"].max() < 1e-6  # nothing is sampled
    sampled = ppl_vae.evaluate(model, guide, x, num_particles=4000, estimator="sampled", seed=1)
    joint, se = sampled.attrs["joint"]["elbo"], sampled.attrs["joint"]["elbo_se"]
    assert within(joint, float(elbo.sum()), se), (joint, se, float(elbo.sum()))
    assert se > 0.1
    # the summed importance weight is Σ_y p(x, y) = p(x): the IWAE bound is exact
    ll = ppl_vae.log_likelihood(model, guide, x, num_samples=3)
    np.testing.assert_allclose(ll.to_numpy(), log_px, rtol=1e-5)
    draws = estimate_draws(model, guide, x, ["sampled", "enum"], 300, seed=2)
    by = draws.groupby("estimator")
    assert by["kl"].std()["enum"] < 1e-6 and by["elbo"].std()["enum"] < 1e-6
    mean, sd = by["elbo"].mean()["sampled"], by["elbo"].std()["sampled"]
    assert abs(mean - float(elbo.mean())) < 4 * sd / math.sqrt(300)
    table = gradient_variance(model, guide, x, ["sampled", "enum"], 50, seed=3)
    encoder_rows = table[table["param_group"] == "encoder"].set_index("estimator")
    assert encoder_rows.loc["enum", "variance"] < 1e-8 < encoder_rows.loc["sampled", "variance"]


def test_amortized_gmm_trains_under_enum_as_pyro_does():
    model, guide, _ = amortized_gmm()
    x = gmm_data()
    guide(x), model(x)
    start = -TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x) / len(x)
    result = ppl_vae.fit(model, guide, x, estimator="enum", num_steps=200, lr=0.05)
    assert result.history["elbo"].iloc[0] == pytest.approx(start, rel=1e-6)
    assert result.final_elbo > start
    sites = result.sites.set_index("site")
    assert sites.loc["y", "enumerated"] == "guide" and sites.loc["y", "kl"] == "enumerated (exact)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampled_sites = ppl_vae.fit(model, guide, x, estimator="sampled", num_steps=1).sites
    assert sampled_sites.set_index("site").loc["y", "kl"] == "sampled (score function)"
    assert not caught  # Pyro's "use TraceEnum_ELBO" hint is what the sites table says


@pytest.mark.parametrize("estimator", ["analytic", "iwae", "dreg"])
def test_estimators_without_a_score_function_refuse_a_discrete_guide_site(estimator):
    """Before any step: analytic has no closed form for it, and Pyro's IWAE (RenyiELBO at
    alpha = 0) would give its encoder no gradient at all (its surrogate is α/(1−α)·log q)."""
    model, guide, _ = amortized_gmm()
    steps = []
    refused = r"y \(q=Categorical\) are not reparameterized.*'enum'"
    with pytest.raises(EstimatorError, match=refused):
        ppl_vae.fit(model, guide, gmm_data(), estimator=estimator, num_steps=5, num_particles=3,
                    callback=steps.append)
    assert steps == []


def test_enum_without_marked_sites_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(EstimatorError, match="marks none.*config_enumerate"):
        ppl_vae.fit(model, guide, torch.zeros(4), estimator="enum", num_steps=1)


# --- a summed-out class as the parent of a guide site's prior ----------------------------------


PI, MEANS = torch.tensor([0.3, 0.7]), torch.tensor([-2.0, 2.0])


def posterior_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd of p(z|x) = Σ_c p(c|x) N(z | (x + m_c)/2, ½), p(c|x) ∝ π_c N(x | m_c, √2)."""
    resp = (PI.log() + dist.Normal(MEANS, math.sqrt(2)).log_prob(x[..., None])).softmax(-1)
    means = (x[..., None] + MEANS) / 2
    mean = (resp * means).sum(-1)
    return mean, (0.5 + (resp * (means - mean[..., None]) ** 2).sum(-1)).sqrt()


def mixture_prior_pair():
    """c ~ Cat(π) summed out, z | c ~ N(m_c, 1), x | z ~ N(z, 1); q(z|x) = N(E[z|x], sd[z|x])."""

    @config_enumerate
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(PI))
            z = pyro.sample("z", dist.Normal(MEANS[c], 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*posterior_moments(x)))

    return model, guide


def test_mixture_prior_split_and_bounds_against_closed_forms():
    """log p(x_n) = log Σ_c π_c N(x_n | m_c, √2); the KL term of z is E_q[log q − log p(z)]
    with the marginal prior p(z) = Σ_c π_c N(z | m_c, 1), the reconstruction E_q log N(x | z, 1)
    (closed form: log N(x | μ, 1) − s²/2)."""
    model, guide = mixture_prior_pair()
    x = torch.tensor([-3.0, -0.5, 0.4, 2.5])
    mu, sd = posterior_moments(x)
    frame = ppl_vae.evaluate(model, guide, x, num_particles=20000, estimator="enum", seed=0)
    recon = dist.Normal(mu, 1.0).log_prob(x) - sd**2 / 2
    np.testing.assert_allclose(frame["reconstruction"], recon, atol=4 * 2 / math.sqrt(20000))
    z = dist.Normal(mu, sd).sample((200000,))
    log_prior = torch.logsumexp(PI.log() + dist.Normal(MEANS, 1.0).log_prob(z[..., None]), -1)
    kl = (dist.Normal(mu, sd).log_prob(z) - log_prior).mean(0)
    np.testing.assert_allclose(frame["kl[z]"], kl, atol=0.02)
    exact = torch.logsumexp(PI.log() + dist.Normal(MEANS, math.sqrt(2)).log_prob(x[:, None]), -1)
    ll = ppl_vae.log_likelihood(model, guide, x, num_samples=5000, seed=1)
    np.testing.assert_allclose(ll.to_numpy(), exact, atol=0.01)
    assert (frame["elbo"] <= exact.numpy() + 3 * frame["elbo_se"]).all()


# --- the unsupervised M2 of Pyro's ss_vae_M2.py -------------------------------------------------


def test_unsupervised_m2_matches_pyro_traceenum_and_trains():
    pair = ss_vae_m2.unsupervised_pair(rows=100)
    result = ppl_vae.fit(pair.model, pair.guide, pair.data, estimator="enum", num_steps=40,
                         batch_size=50, lr=3e-3)
    assert np.isfinite(result.history["elbo"]).all()
    assert result.history["elbo"].iloc[-5:].mean() > result.history["elbo"].iloc[:5].mean()
    frame = ppl_vae.evaluate(pair.model, pair.guide, pair.data, num_particles=200,
                             estimator="enum", seed=0)
    elbo, se = frame.attrs["joint"]["elbo"], frame.attrs["joint"]["elbo_se"]
    loss = TraceEnum_ELBO(max_plate_nesting=1, num_particles=100, vectorize_particles=True,
                          strict_enumeration_warning=False)
    with torch.no_grad():
        values = [-loss.loss(pair.model, pair.guide, pair.data) for _ in range(20)]
    ref, ref_se = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(20))
    assert within(elbo, ref, se, ref_se), (elbo, se, ref, ref_se)
    # the exact sum over y has less noise than sampling it
    sampled = ppl_vae.evaluate(pair.model, pair.guide, pair.data, num_particles=200,
                               estimator="sampled", seed=0)
    assert sampled.attrs["joint"]["elbo_se"] > 1.5 * se
    assert frame.attrs["kl_method"] == {"y": "enumerated (exact)", "z": "sampled"}
    diagnostics = ppl_vae.vi_diagnostics(pair.model, pair.guide, pair.data, num_samples=100,
                                         seed=0)
    assert np.isfinite(diagnostics["khat"]).all() and len(diagnostics) == 100


# --- what enumeration cannot split per datapoint -------------------------------------------------


def test_enumeration_without_a_per_datapoint_split_is_refused():
    @config_enumerate
    def model(x):  # a global switch: its sum couples the rows
        s = pyro.sample("switch", dist.Bernoulli(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(2 * s - 1, 1.0), obs=x)

    def guide(x):
        pass

    with pytest.raises(PairError, match="'switch' lies outside the data plate"):
        ppl_vae.evaluate(model, guide, torch.zeros(3))

    def local_model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def sequential_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.4), infer={"enumerate": "sequential"})

    with pytest.raises(PairError, match="enumerate='sequential'.*'parallel'"):
        ppl_vae.evaluate(local_model, sequential_guide, torch.zeros(3), estimator="enum")


# --- the zoo's M2 on the command line -------------------------------------------------------------


def test_cli_trains_and_compares_the_zoo_m2(tmp_path, capsys):
    digits = ppl_vae.load_data("digits", binarize=True).numpy()
    np.save(tmp_path / "train.npy", digits[:200])
    np.save(tmp_path / "test.npy", digits[200:240])
    data = ["--model", "models/m2_vae.py", "--data", str(tmp_path / "train.npy"),
            "--test-data", str(tmp_path / "test.npy"), "--no-progress"]
    out = tmp_path / "run"
    code = main(["train", *data, "--estimator", "enum", "--steps", "20", "--batch-size", "64",
                 "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    kinds = {s["site"]: s["kl"] for s in summary["sites"]}
    assert kinds == {"y": "enumerated (exact)", "z": "sampled"}
    assert summary["metrics"]["test_log_likelihood"] > summary["metrics"]["test_elbo"]
    code = main(["diagnose", "--run", str(out), "--samples", "20", "--khat-samples", "50",
                 "--rows", "5", "--sbc-simulations", "100", "--sbc-draws", "19", "--gap-rows",
                 "5", "--gap-steps", "10"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "gap split: skipped: guide site 'y' is a Categorical" in printed
    calibrated = pd.read_csv(out / "diagnostics" / "calibration.csv")  # q's y is drawn, ranked
    assert calibrated["coordinate"].tolist() == ["y"] + [f"z[{i}]" for i in range(8)]
    khat = pd.read_csv(out / "diagnostics" / "khat.csv")  # on the summed importance weights
    assert len(khat) == 40 and np.isfinite(khat["khat"]).all()
    code = main(["train", *data, "--estimator", "analytic", "--steps", "20",
                 "--out", str(tmp_path / "bad")])
    assert code == 2
    assert "estimator='enum'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    small = [*data, "--steps", "10", "--draws", "4", "--checkpoints", "1", "--ll-samples", "20",
             "--seeds", "0"]
    code = main(["compare", *small, "--out", str(tmp_path / "bad")])  # sampled and analytic
    assert code == 2 and "estimator='enum'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    compared = tmp_path / "compared"
    code = main(["compare", *small, "--estimators", "sampled", "enum", "--out", str(compared)])
    assert code == 0
    loaded = ppl_vae.Comparison.load(compared)
    summary = loaded.summary.set_index("estimator")
    # summing y removes its score-function noise from the encoder's gradient
    assert summary.loc["enum", "encoder_variance_init"] < summary.loc["sampled",
                                                                      "encoder_variance_init"]
    kinds = loaded.sites.set_index(["estimator", "site"])["kl"]
    assert kinds[("enum", "y")] == "enumerated (exact)"
    assert kinds[("sampled", "y")] == "sampled (score function)"


def test_enum_resumes_bit_for_bit(tmp_path):
    model, guide, _ = amortized_gmm()
    x = gmm_data()
    whole = ppl_vae.fit(model, guide, x, estimator="enum", num_steps=6, batch_size=16, lr=0.05)
    pyro.clear_param_store()
    model, guide, _ = amortized_gmm()
    ppl_vae.fit(model, guide, x, estimator="enum", num_steps=6, batch_size=16, lr=0.05,
                checkpoint_dir=tmp_path, checkpoint_every=1, callback=lambda info: info.step == 3)
    pyro.clear_param_store()
    model, guide, _ = amortized_gmm()
    resumed = ppl_vae.fit(model, guide, x, estimator="enum", num_steps=6, batch_size=16,
                          lr=0.05, checkpoint_dir=tmp_path, resume=True)
    assert resumed.history["elbo"].tolist() == whole.history["elbo"].tolist()
    assert all(torch.equal(resumed.params[k], whole.params[k]) for k in whole.params)


def test_toy_mixture_example_with_global_latents_and_minibatches():
    """Pyro's toy mixture: B summed out of the model, global Beta latents, Vindex; trained on
    minibatches (the data plate scaled by N/B) and evaluated against Pyro's TraceEnum_ELBO of
    the whole data set at the same parameters."""
    pair = toy_mixture.pair()
    result = ppl_vae.fit(pair.model, pair.guide, pair.data, estimator="enum", num_steps=80,
                         batch_size=50, lr=0.05)
    assert result.final_elbo > result.history["elbo"].iloc[:10].mean()
    frame = _quiet(ppl_vae.evaluate, pair.model, pair.guide, pair.data, num_particles=100,
                   estimator="enum", seed=0)
    elbo, se = frame.attrs["joint"]["elbo"], frame.attrs["joint"]["elbo_se"]
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        values = [-loss.loss(pair.model, pair.guide, *pair.data) for _ in range(100)]
    ref, ref_se = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(100))
    assert within(elbo, ref, se, ref_se), (elbo, se, ref, ref_se)
    assert frame.attrs["global_sites"] == ["p_A", "p_B", "p_C"]
    assert frame.attrs["kl_method"]["B"] == "enumerated (exact)"
