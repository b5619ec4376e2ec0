"""The pair contract (docs/pairs.md): data forms, dtypes, default batch, every site of q,
global latents scaled and drawn once, honest KL labels, refusals before training."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.pair.dataset import as_dataset
from ppl_vae.pair.traces import run_pair
from ppl_vae.training.plates import scale_data_plate


def regression(sigma: float = 0.5, prior: float = 2.0):
    """Bayesian linear regression model(x, y) with a Gaussian prior on the weights."""

    def model(x, y):
        w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), prior).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal((x * w).sum(-1), sigma), obs=y)

    return model


def regression_data(n=60, d=2, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.tensor([1.0, -2.0][:d]) + sigma * torch.randn(n, generator=g)
    return x, y


def test_tuple_dict_and_constant_data_reach_the_pair_minibatched_together():
    seen = []

    def model(x, y, *, offset, flag=False):
        seen.append((tuple(x.shape), tuple(y.shape), float(offset), flag))
        assert torch.equal(y, x[:, 0] * 2)  # rows of x and y cut by one index
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc + offset, 1.0), obs=y)

    def guide(x, y, *, offset, flag=False):
        pass

    x = torch.arange(40.0).reshape(20, 2)
    data = {"x": x, "y": x[:, 0] * 2}
    ppl_vae.fit(model, guide, data, num_steps=3, batch_size=8,
                model_kwargs={"offset": 1.5, "flag": True})
    assert seen[-1] == ((8, 2), (8,), 1.5, True)
    terms = ppl_vae.evaluate(model, guide, data, num_particles=2, batch_size=7,
                             model_kwargs={"offset": 1.5})
    assert len(terms) == 20 and seen[-1][:3] == ((6, 2), (6,), 1.5)
    with pytest.raises(ppl_vae.DataError, match=r"different numbers of rows"):
        ppl_vae.fit(model, guide, {"x": x, "y": x[:5, 0]}, model_kwargs={"offset": 0.0})
    with pytest.raises(ppl_vae.DataError, match=r"per-row data and in model_kwargs"):
        ppl_vae.fit(model, guide, data, model_kwargs={"x": 1})


def test_default_batch_is_the_whole_data_when_it_has_fewer_rows():
    x, y = regression_data(n=40)
    result = ppl_vae.fit(regression(), AutoNormal(regression()), (x, y), num_steps=2)
    assert result.batch_size == 40


def test_float64_data_and_pair_stay_float64_and_a_mismatch_names_both_dtypes():
    x, y = (t.double() for t in regression_data())
    model = regression()
    guide = AutoNormal(model)
    result = ppl_vae.fit(model, guide, (x, y), num_steps=5)
    assert all(v.dtype == torch.float64 for v in result.params.values())
    with pytest.raises(ppl_vae.PairError, match=r"data is torch.float32 but the pair has "
                                                r"\['torch.float64'\] parameters"):
        ppl_vae.evaluate(model, guide, (x.float(), y.float()))


def test_analytic_with_autonormal_equals_trace_elbo_at_the_same_draw():
    """AutoNormal's sites are Deltas with log_density: no closed form applies, so the
    analytic estimator must give Trace_ELBO's number on the same draw (Pyro's own
    TraceMeanField_ELBO drops the Jacobian term of constrained sites)."""

    def model(counts):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", counts.shape[0]):
            pyro.sample("obs", dist.Poisson(rate), obs=counts)

    counts = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0])
    guide = AutoNormal(model)
    guide(counts)
    ours = ppl_vae.estimators.estimators.get("analytic").make(1, 1)
    theirs = pyro.infer.Trace_ELBO(max_plate_nesting=1, vectorize_particles=True)
    pyros = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1, vectorize_particles=True)
    losses = []
    for elbo in (ours, theirs, pyros):
        pyro.set_rng_seed(3)
        losses.append(elbo.loss(model, guide, counts))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert abs(losses[2] - losses[1]) > 1e-2  # Pyro's own drops the log-Jacobian
    sites = ppl_vae.fit(model, guide, counts, estimator="analytic", num_steps=1).sites
    assert not (sites["kl"] == "closed-form").any()


def test_a_non_reparameterized_guide_site_is_refused_by_analytic_before_training():
    steps = []

    def model(x):
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Bernoulli(0.5))
            pyro.sample("obs", dist.Normal(k, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.full((x.shape[0],), 0.5),
                       constraint=dist.constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("k", dist.Bernoulli(p))

    x = torch.randn(10)
    with pytest.raises(ppl_vae.EstimatorError, match=r"'k'|k \(q=Bernoulli\).*estimator='sampled'"):
        ppl_vae.fit(model, guide, x, estimator="analytic", num_steps=3, batch_size=10,
                    callback=lambda info: steps.append(info.step))
    assert steps == []
    sites = ppl_vae.fit(model, guide, x, estimator="sampled", num_steps=3, batch_size=10).sites
    assert sites.loc[0, "kl"] == "sampled (score function)"


def test_minibatch_objective_is_the_full_data_elbo_with_global_latents():
    """With a point-mass guide nothing is sampled: the N/B-scaled losses of a partition's
    minibatches average exactly to the full-data loss."""
    x, y = regression_data(n=60)
    model = regression()
    guide = AutoDelta(model)
    guide(x, y)
    elbo = pyro.infer.Trace_ELBO()
    full = elbo.loss(model, guide, x, y)
    layout = run_pair(model, guide, as_dataset((x, y)).head(60))
    scaled = [scale_data_plate(f, 60 / 15, layout.data_plate) for f in (model, guide)]
    parts = [elbo.loss(*scaled, x[i : i + 15], y[i : i + 15]) for i in range(0, 60, 15)]
    assert np.mean(parts) == pytest.approx(full, rel=1e-6)
    unscaled = np.mean([elbo.loss(model, guide, x[i : i + 15], y[i : i + 15])
                        for i in range(0, 60, 15)])
    assert abs(unscaled - full) > 1.0  # without the scaling the prior counts 4 times


def test_exact_evidence_bounds_the_joint_elbo_and_iwae_and_batch_size_does_not_matter():
    """Bayesian regression with known noise: log p(Y) = log N(Y | 0, s0² X Xᵀ + σ² I)."""
    x, y = regression_data(n=60)
    model = regression()
    guide = AutoNormal(model)
    ppl_vae.fit(model, guide, (x, y), num_steps=600, lr=0.05, batch_size=60)
    cov = 4.0 * x @ x.T + 0.25 * torch.eye(60)
    exact = float(dist.MultivariateNormal(torch.zeros(60), cov.double()).log_prob(y.double()))
    joints = [ppl_vae.evaluate(model, guide, (x, y), 400, estimator="sampled", batch_size=b,
                               seed=1).attrs["joint"] for b in (7, 25, 60)]
    for j in joints:
        assert j["elbo"] < exact + 3 * j["elbo_se"]
        assert j["elbo"] == pytest.approx(joints[-1]["elbo"], abs=6 * j["elbo_se"] + 1e-6)
    ll = ppl_vae.log_likelihood(model, guide, (x, y), num_samples=2000, seed=0)
    assert joints[-1]["elbo"] - 0.1 < ll.attrs["joint"] < exact + 0.1
    assert ll.attrs["global_sites"] == ["w"]
    diagnostics = ppl_vae.vi_diagnostics(model, guide, (x, y), num_samples=500)
    assert math.isfinite(diagnostics.attrs["joint_khat"]) and "whole data set" in \
        diagnostics.attrs["verdict"]


def test_model_side_subsampling_is_refused_with_the_way_out():
    def model(x):
        with pyro.plate("data", 100, subsample_size=10) as ind:
            pyro.sample("obs", dist.Normal(0.0, 1.0), obs=x[ind])

    def guide(x):
        pass

    with pytest.raises(ppl_vae.PairError, match=r"subsamples its plate 'data' \(10 of 100"):
        ppl_vae.fit(model, guide, torch.randn(100), num_steps=1)


def test_support_error_names_the_true_row_column_and_value_of_an_event_likelihood():
    model, guide = ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=4)
    x = torch.zeros(6, 4)
    x[3, 2] = 0.5
    with pytest.raises(ppl_vae.DataError, match=r"value 0.5 at row 3, column 2"):
        ppl_vae.fit(model, guide, x, num_steps=1)


def test_a_pair_file_imports_its_neighbours(tmp_path, monkeypatch):
    (tmp_path / "helpers_for_pair.py").write_text("WIDTH = 3\n")
    (tmp_path / "pair.py").write_text(
        "from helpers_for_pair import WIDTH\n"
        "from models.gaussian_vae import make_pair as base\n"
        "def make_pair(x_dim):\n    return base(x_dim=WIDTH, z_dim=1, hidden=4)\n"
    )
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    pair = ppl_vae.load_pair(str(tmp_path / "pair.py"), x_dim=3)
    assert pair.x_dim == 3


def test_cli_trains_on_a_npz_of_named_arrays_and_keeps_the_run_when_evaluation_fails(tmp_path):
    x, y = regression_data(n=30)
    np.savez(tmp_path / "train.npz", x=x.numpy(), y=y.numpy())
    np.savez(tmp_path / "test.npz", x=x.numpy()[:5], y=y.numpy()[:5])
    (tmp_path / "pair.py").write_text(
        "import pyro, pyro.distributions as dist\n"
        "from pyro.infer.autoguide import AutoNormal\n"
        "import ppl_vae\n"
        "def model(x, y):\n"
        "    w = pyro.sample('w', dist.Normal(x.new_zeros(2), 2.0).to_event(1))\n"
        "    if x.shape[0] == 5:\n"
        "        raise RuntimeError('a model that fails on held-out data')\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        pyro.sample('obs', dist.Normal((x * w).sum(-1), 0.5), obs=y)\n"
        "def make_pair():\n"
        "    return ppl_vae.ModelGuidePair(model, AutoNormal(model), name='regression')\n"
    )
    out = tmp_path / "run"
    code = main(["train", "--model", str(tmp_path / "pair.py"), "--data",
                 str(tmp_path / "train.npz"), "--test-data", str(tmp_path / "test.npz"),
                 "--estimator", "sampled", "--steps", "20", "--out", str(out), "--no-progress"])
    assert code == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["batch_size"] == 30 and "a model that fails" in \
        summary["metrics"]["evaluation_error"]
    assert (out / "params.pt").is_file()


def test_diagnose_a_global_only_model_whose_observed_site_is_obs(tmp_path):
    """Pyro's coin tutorial, vectorized: one global latent, likelihood named ``obs``."""
    flips = np.array([1.0] * 6 + [0.0] * 4, dtype=np.float32)
    np.save(tmp_path / "flips.npy", flips.reshape(-1, 1))
    (tmp_path / "coin.py").write_text(
        "import pyro, pyro.distributions as dist, torch\n"
        "import ppl_vae\n"
        "def model(x):\n"
        "    f = pyro.sample('latent_fairness', dist.Beta(10.0, 10.0))\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        pyro.sample('obs', dist.Bernoulli(f), obs=x[:, 0])\n"
        "def guide(x):\n"
        "    a = pyro.param('alpha_q', torch.tensor(15.0), constraint=dist.constraints.positive)\n"
        "    b = pyro.param('beta_q', torch.tensor(15.0), constraint=dist.constraints.positive)\n"
        "    pyro.sample('latent_fairness', dist.Beta(a, b))\n"
        "def make_pair():\n"
        "    return ppl_vae.ModelGuidePair(model, guide, name='coin')\n"
    )
    run = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / "coin.py"), "--data",
                 str(tmp_path / "flips.npy"), "--steps", "200", "--lr", "0.05", "--estimator",
                 "analytic", "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "diag"
    assert main(["diagnose", "--run", str(run), "--split", "train", "--samples", "50",
                 "--khat-samples", "400", "--out", str(out)]) == 0
    summary = json.loads((out / "diagnostics.json").read_text())
    assert summary["global_sites"] == ["latent_fairness"]
    # one global latent: SBC needs a refit per simulation, the gap split local latents
    assert summary["calibration"]["summary"].startswith("skipped: the pair has global latents")
    assert summary["inference_gap"]["summary"].startswith("skipped: the guide has global")
    assert not (out / "calibration.csv").exists() and not (out / "gap.csv").exists()
    assert summary["joint_khat"] < 0.7
    idata = ppl_vae.arviz_compat.load(out / "posterior.nc")
    assert idata["posterior"].attrs["row_dim"] == "obs_row"
    assert set(idata["log_likelihood"].data_vars) == {"obs"}
    assert idata["posterior"]["latent_fairness"].shape == (1, 50)


def test_resume_with_tuple_data_is_exact_and_refuses_other_data(tmp_path):
    x, y = regression_data(n=48)
    model = regression()

    def run(steps, **options):
        pyro.clear_param_store()
        guide = AutoNormal(model)
        result = ppl_vae.fit(model, guide, (x, y), num_steps=steps, batch_size=16, seed=2,
                             **options)
        return result.params

    whole = run(30)
    run(12, checkpoint_dir=tmp_path / "ck", checkpoint_every=4)
    resumed = run(30, checkpoint_dir=tmp_path / "ck", resume=True)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(ppl_vae.CheckpointError, match="data"):
        pyro.clear_param_store()
        ppl_vae.fit(model, AutoNormal(model), (x, y + 1), num_steps=40, batch_size=16, seed=2,
                    checkpoint_dir=tmp_path / "ck", resume=True)


def test_reference_posterior_takes_tuple_data_and_matches_the_exact_posterior():
    """NUTS on w given (x, y) with the known-noise regression: the exact Gaussian posterior."""
    x, y = regression_data(n=30)
    model = regression()
    idata = ppl_vae.reference_posterior(model, (x, y), num_samples=400, warmup_steps=200,
                                        seed=0)
    draws = idata["posterior"]["w"].values.reshape(-1, 2)
    precision = x.T @ x / 0.25 + torch.eye(2) / 4.0
    mean = torch.linalg.solve(precision, x.T @ y / 0.25)
    sd = torch.linalg.inv(precision).diagonal().sqrt()
    assert np.allclose(draws.mean(0), mean.numpy(), atol=4 * float(sd.max()) / 10)
    assert np.allclose(draws.std(0), sd.numpy(), rtol=0.25)


def test_several_particles_on_a_pair_that_does_not_broadcast_is_refused_up_front():
    from tests.conformance import ss_vae_m2

    pair = ss_vae_m2.pair(sized_plate=True)
    with pytest.raises(ppl_vae.PairError, match=r"num_particles=3 .* does not broadcast"):
        ppl_vae.fit(pair.model, pair.guide, pair.data, num_particles=3, num_steps=2)
    with pytest.warns(ppl_vae.ParticleLoopWarning):
        ppl_vae.fit(pair.model, pair.guide, pair.data, num_steps=2, batch_size=20)
        ppl_vae.evaluate(pair.model, pair.guide, pair.data, num_particles=3)


@pytest.mark.parametrize("options", [{"clip_norm": 0.0}, {"clip_norm": -1.0},
                                     {"clip_norm": math.nan}, {"lr": math.inf},
                                     {"lr": math.nan}])
def test_settings_that_would_train_silently_wrong_are_refused(options):
    model = regression()
    x, y = regression_data(n=20)
    with pytest.raises(ppl_vae.PplVaeError, match="must be a finite number > 0"):
        ppl_vae.fit(model, AutoNormal(model), (x, y), num_steps=2, **options)


def test_cli_refuses_a_negative_clip_norm_in_one_line(capsys):
    code = main(["train", "--model", "models/bernoulli_vae.py", "--steps", "2", "--clip-norm",
                 "-1", "--out", "/nonexistent/never-written", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gradient ascent" in err[0]


def test_bad_counts_and_rows_are_refused_through_the_api():
    model = regression()
    guide = AutoNormal(model)
    x, y = regression_data(n=12)
    ppl_vae.fit(model, guide, (x, y), num_steps=1)
    for call in (
        lambda: ppl_vae.evaluate(model, guide, (x, y), num_particles=0),
        lambda: ppl_vae.evaluate(model, guide, (x, y), batch_size=0),
        lambda: ppl_vae.log_likelihood(model, guide, (x, y), num_samples=0),
        lambda: ppl_vae.vi_diagnostics(model, guide, (x, y), num_samples=10, particle_batch=0),
        lambda: ppl_vae.to_inference_data(model, guide, (x, y), 10, particle_batch=0),
    ):
        with pytest.raises(ppl_vae.PplVaeError, match="must be a positive integer"):
            call()
    with pytest.raises(ppl_vae.DataError, match="whole row numbers"):
        ppl_vae.to_inference_data(model, guide, (x, y), 10, obs=[1.5])
    with pytest.raises(ppl_vae.PplVaeError, match="FitResult"):
        ppl_vae.to_inference_data(model, guide, (x, y), 10, fits="x")


def test_a_checkpoint_with_junk_history_is_refused(tmp_path):
    from ppl_vae.training.checkpoint import FILENAME, read_checkpoint
    from ppl_vae.utils.params import write_tensors

    x, y = regression_data(n=16)
    model = regression()
    options = dict(num_steps=4, batch_size=8, checkpoint_dir=tmp_path, checkpoint_every=2)
    ppl_vae.fit(model, AutoNormal(model), (x, y), **options)
    payload = read_checkpoint(tmp_path / FILENAME)
    payload["rows"] = [("junk",)] * payload["step"]
    write_tensors(tmp_path / FILENAME, payload)
    pyro.clear_param_store()
    with pytest.raises(ppl_vae.CheckpointError, match="malformed history"):
        ppl_vae.fit(model, AutoNormal(model), (x, y), **options | {"num_steps": 6}, resume=True)
