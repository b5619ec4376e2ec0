"""compare_estimators: reproducible, isolated runs; exact gap; fallback; save/load; errors."""

import math

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import ppl_vae
from ppl_vae import Comparison, arviz_compat, compare_estimators
from ppl_vae.comparison.report import markdown
from ppl_vae.utils.errors import EstimatorError, OutputError, PplVaeError
from tests.conftest import requires_cuda
from tests.pairs import ppca_rows

TIMING = ["time_s", "ms_per_step", "ms_per_step_sd", "seconds", "seconds_sd"]
TINY = dict(
    seeds=(0, 1),
    num_steps=12,
    batch_size=32,
    num_draws=4,
    num_checkpoints=2,
    num_evals=3,
    eval_particles=4,
    final_particles=8,
    ll_samples=16,
    gap_rows=6,
    gap_steps=10,
)


@pytest.fixture
def binary_data():
    generator = torch.Generator().manual_seed(5)
    x = (torch.rand(120, 10, generator=generator) > 0.5).float()
    return x[:90], x[90:]


def tiny_vae():
    from models.bernoulli_vae import make_pair

    return make_pair(x_dim=10, z_dim=2, hidden=8)


def without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in TIMING if c in frame.columns])


def test_runs_are_reproducible_isolated_and_leave_the_store_alone(binary_data):
    train, test = binary_data
    pair = tiny_vae()
    model, guide = pair
    ppl_vae.fit(model, guide, train, num_steps=3, batch_size=32)  # the user's own state
    pyro.param("user_only", torch.tensor(2.5))
    store = pyro.get_param_store()
    before = {name: value.detach().clone() for name, value in store.named_parameters()}
    weights = [p.detach().clone() for m in pair.modules for p in m.parameters()]
    rng = torch.get_rng_state()

    first = compare_estimators(model, guide, train, test, modules=pair.modules, **TINY)

    assert set(store.keys()) == set(before)
    for name, value in store.named_parameters():
        torch.testing.assert_close(value.detach(), before[name], rtol=0, atol=0)
    for p, w in zip((p for m in pair.modules for p in m.parameters()), weights, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)

    again = compare_estimators(model, guide, train, test, modules=pair.modules, **TINY)
    for name, table in first.tables().items():
        pd.testing.assert_frame_equal(without_timing(table), without_timing(again.tables()[name]))

    # every estimator of a seed starts from the same parameters; seeds start elsewhere
    start = first.curves[first.curves["step"] == 0].set_index(["seed", "estimator"])["test_elbo"]
    assert start[(0, "sampled")] == start[(0, "analytic")]
    assert start[(1, "sampled")] == start[(1, "analytic")]
    assert start[(0, "sampled")] != start[(1, "sampled")]

    # an analytic run is the same whether or not a sampled run came before it
    alone = compare_estimators(
        model, guide, train, test, modules=pair.modules, estimators=("analytic",), **TINY
    )
    for name in ("runs", "curves"):
        mine = getattr(first, name)
        pd.testing.assert_frame_equal(
            without_timing(mine[mine["estimator"] == "analytic"]).reset_index(drop=True),
            without_timing(getattr(alone, name)),
        )


def test_shapes_and_definitions(binary_data):
    train, test = binary_data
    pair = tiny_vae()
    c = compare_estimators(*pair, train, test, **TINY)
    steps = c.settings["checkpoints"]
    assert steps[0] == 0 and steps[-1] == TINY["num_steps"]
    # gradients: run × seed × checkpoint × estimator × {encoder, decoder}
    assert len(c.gradients) == 2 * 2 * len(steps) * 2 * 2
    assert set(c.gradients["param_group"]) == {"encoder", "decoder"}
    g = c.gradients
    assert (g["snr"] - g["mean_norm"] / g["variance"] ** 0.5).abs().max() < 1e-9
    # the decoder's gradient does not involve the KL term: identical under both estimators
    dec = g[g["param_group"] == "decoder"].pivot_table(
        index=["run", "seed", "step"], columns="estimator", values="variance"
    )
    assert (dec["sampled"] - dec["analytic"]).abs().max() < 1e-6 * dec["sampled"].max()
    # analytic KL term is constant given x; estimates agree with their draws
    e = c.estimates
    assert e.loc[e["estimator"] == "analytic", "kl_sd"].max() < 1e-6
    assert e.loc[e["estimator"] == "sampled", "kl_sd"].min() > 0
    d = c.draws.groupby(["run", "seed", "step", "estimator"], sort=False)["elbo"].std()
    assert d.to_numpy() == pytest.approx(e["elbo_sd"].to_numpy())
    # curves: one row per step plus initialization, per run
    assert len(c.curves) == 2 * 2 * (TINY["num_steps"] + 1)
    assert c.curves["test_elbo"].notna().sum() == 2 * 2 * (TINY["num_evals"] + 1)
    # summary: mean and sd over seeds of the per-run numbers; differences paired by seed
    runs = c.runs.set_index(["estimator", "seed"])
    summary = c.summary.set_index("estimator")
    assert summary.loc["analytic", "test_elbo"] == pytest.approx(
        runs.loc["analytic", "test_elbo"].mean()
    )
    diff = c.differences.set_index("metric").loc["test_elbo"]
    paired = runs.loc["analytic", "test_elbo"] - runs.loc["sampled", "test_elbo"]
    assert diff["difference"] == pytest.approx(paired.mean())
    half = 12.706 * paired.std(ddof=1) / math.sqrt(2)  # t(0.975, 1 df)
    assert diff["ci_high"] - diff["difference"] == pytest.approx(half, rel=1e-3)
    # the IWAE bound is at least as tight as the ELBO (up to Monte Carlo error)
    assert (c.runs["log_likelihood"] > c.runs["test_elbo"] - 0.05).all()
    assert list(c.sites["kl"]) == ["sampled", "closed-form"]
    assert (c.runs["graph_mb"] > 0).all() and c.runs["cuda_peak_mb"].isna().all()
    # held-out log p(x) from ppl_vae.elpd: its rows, their sum, the IWAE beside them
    rows = c.elpd.groupby(["estimator", "seed"], sort=False)
    assert len(c.elpd) == 4 * len(test) and rows.size().eq(len(test)).all()
    per_row = rows[["elpd", "iwae"]].mean()
    np.testing.assert_allclose(per_row["elpd"], runs["elpd"].loc[per_row.index])
    np.testing.assert_allclose(per_row["iwae"], runs["log_likelihood"].loc[per_row.index])
    fits = c.elpd_data()
    assert list(fits) == ["sampled, seed 0", "analytic, seed 0", "sampled, seed 1",
                          "analytic, seed 1"]
    table = arviz_compat.compare(fits)
    assert table["elpd"].max() == pytest.approx(len(test) * c.runs["elpd"].max())
    assert "## Model comparison (az.compare)" in markdown(c) and "dse" in markdown(c)


def test_linear_gaussian_reports_the_exact_gap():
    """gap = log p(x) − ELBO must equal KL(q(z|x) ‖ p(z|x)), computed here independently."""
    from models import linear_gaussian

    x = ppca_rows(1)
    pair = linear_gaussian.make_pair(x_dim=5, z_dim=2)
    truths = []

    def exact(rows):
        truths.append(float(linear_gaussian.kl_to_posterior(rows).mean()))
        return linear_gaussian.exact_log_likelihood(rows)

    settings = TINY | {"final_particles": 2000, "num_steps": 40, "gap_rows": 0}
    c = compare_estimators(*pair, x[:120], x[120:], exact_log_likelihood=exact, lr=0.05, **settings)
    assert len(truths) == 4
    # the gap is known up to the held-out ELBO's Monte Carlo error
    errors = (c.runs["gap"] - truths).abs()
    assert (c.runs["test_elbo_se"] > 0).all()
    assert (errors < 4 * c.runs["test_elbo_se"] + 1e-4).all(), (errors, c.runs["test_elbo_se"])
    assert (c.runs["gap"] > 0).all()
    assert (c.runs["log_likelihood"] <= c.runs["exact_log_likelihood"] + 0.02).all()
    # the held-out ELPD estimates log p(x): far closer to it than the ELBO is, after 40 steps
    error = (c.runs["elpd"] - c.runs["exact_log_likelihood"]).abs()
    assert (error < 0.1).all() and (error < 0.5 * c.runs["gap"]).all(), (error, c.runs["gap"])
    assert "exact gap log p(x) − ELBO" in markdown(c)
    assert "gap" in set(c.differences["metric"])


def test_mixture_prior_analytic_falls_back_for_z(binary_data):
    from models.mixture_prior_vae import make_pair

    train, test = binary_data
    pair = make_pair(x_dim=10, z_dim=2, hidden=8, components=3)
    c = compare_estimators(*pair, train, test, **(TINY | {"seeds": (0,), "num_checkpoints": 0}))
    analytic = c.sites.set_index("estimator").loc["analytic"]
    assert analytic["site"] == "z" and analytic["kl"] == "sampled"
    assert not analytic["closed_form_available"]
    # having fallen back, the analytic KL term is as noisy as the sampled one
    e = c.estimates
    assert e.loc[e["estimator"] == "analytic", "kl_sd"].min() > 0
    assert "analytic fell back to the sampled KL" in markdown(c)


def test_save_and_load_round_trip(binary_data, tmp_path):
    train, test = binary_data
    c = compare_estimators(*tiny_vae(), train, test, **(TINY | {"seeds": (3,)}))
    c.save(tmp_path / "cmp")
    loaded = Comparison.load(tmp_path / "cmp")
    for name, table in c.tables().items():
        pd.testing.assert_frame_equal(
            table.reset_index(drop=True), loaded.tables()[name], check_dtype=False
        )
    assert loaded.settings["checkpoints"] == c.settings["checkpoints"]
    with pytest.raises(OutputError, match="--overwrite"):
        c.save(tmp_path / "cmp")
    (tmp_path / "cmp" / "draws.csv").unlink()
    with pytest.raises(OutputError, match="draws.csv"):
        Comparison.load(tmp_path / "cmp")
    with pytest.raises(OutputError, match="does not exist"):
        Comparison.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"estimators": ("sampled", "exact")}, EstimatorError, "unknown estimator"),
        ({"seeds": (1, 1)}, PplVaeError, "distinct"),
        ({"num_draws": 1}, PplVaeError, "num_draws"),
        ({"num_steps": 0}, PplVaeError, "num_steps"),
        ({"ll_samples": 0}, PplVaeError, "ll_samples"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(binary_data, options, error, match):
    train, test = binary_data
    with pytest.raises(error, match=match):
        compare_estimators(*tiny_vae(), train, test, **(TINY | options))
    assert not list(pyro.get_param_store().keys())


@requires_cuda
def test_comparison_on_cuda_measures_the_allocator_peak(binary_data):
    train, test = binary_data
    pair = tiny_vae()
    c = compare_estimators(*pair, train, test, modules=pair.modules, device="cuda", **TINY)
    assert c.settings["device"] == "cuda"
    assert (c.runs["cuda_peak_mb"] > 0).all() and (c.runs["graph_mb"] > 0).all()
    assert c.runs[["test_elbo", "log_likelihood"]].notna().all().all()
    start = c.curves[c.curves["step"] == 0].set_index(["seed", "estimator"])["test_elbo"]
    assert start[(0, "sampled")] == start[(0, "analytic")]


def test_measurements_do_not_disturb_training(binary_data):
    """Checkpoint measurements draw from forked RNG streams: the training curve is the same
    with many measurements as with almost none."""
    train, test = binary_data
    pair = tiny_vae()
    many = compare_estimators(*pair, train, test, modules=pair.modules, **TINY)
    few = compare_estimators(
        *pair, train, test, modules=pair.modules, **(TINY | {"num_checkpoints": 0, "num_evals": 1})
    )
    pd.testing.assert_series_equal(many.curves["train_elbo"], few.curves["train_elbo"])
    pd.testing.assert_series_equal(many.runs["test_elbo"], few.runs["test_elbo"])


def test_stl_rows_share_the_sampled_value_but_not_its_encoder_gradient(binary_data):
    train, test = binary_data
    c = compare_estimators(
        *tiny_vae(), train, test, **(TINY | {"seeds": (0,), "estimators": ("sampled", "stl")})
    )
    assert list(c.sites["kl"]) == ["sampled", "sampled"]
    e = c.estimates.pivot_table(index=["run", "step"], columns="estimator", values="elbo_sd")
    assert (e["sampled"] == e["stl"]).all()
    g = c.gradients.pivot_table(
        index=["run", "step", "param_group"], columns="estimator", values="variance"
    )
    decoder = g.xs("decoder", level="param_group")
    assert (decoder["sampled"] - decoder["stl"]).abs().max() < 1e-6 * decoder["sampled"].max()
    encoder = g.xs("encoder", level="param_group")
    assert (encoder["sampled"] != encoder["stl"]).all()


def test_comparison_with_an_iwae_row(binary_data):
    train, test = binary_data
    c = compare_estimators(
        *tiny_vae(),
        train,
        test,
        **(TINY | {"seeds": (0,), "estimators": ("sampled", "iwae"), "iwae_particles": 4}),
    )
    assert c.settings["iwae_particles"] == 4
    assert list(c.summary["estimator"]) == ["sampled", "iwae"]
    assert c.estimates.loc[c.estimates.estimator == "iwae", "kl_mean"].isna().all()
    # paired draws: at the same parameters the bound with K = 4 beats the one-particle ELBO
    e = c.estimates.pivot_table(index=["run", "step"], columns="estimator", values="elbo_mean")
    assert (e["iwae"] > e["sampled"]).all()
    assert c.differences.loc[0, "estimator"] == "iwae"
