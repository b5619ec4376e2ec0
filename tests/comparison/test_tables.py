"""The comparison's tables from hand-made run records: no training, known answers."""

import math

import pandas as pd
import pytest
from scipy import stats

from ppl_vae.comparison.measure import RunRecord
from ppl_vae.comparison.tables import assemble


def record(estimator: str, seed: int, test_elbo: float, variance: float) -> RunRecord:
    def measured(step):
        grads = pd.DataFrame({"estimator": [estimator], "param_group": ["encoder"],
                              "variance": [variance * (1 + step)], "snr": [1.0],
                              "mean_norm": [1.0], "num_params": [3]})
        draws = pd.DataFrame({"estimator": estimator, "draw": [0, 1], "elbo": [-1.0, -3.0],
                              "kl": [0.5, 1.5]})
        tags = {"run": estimator, "seed": seed, "step": step}
        return grads.assign(**tags), draws.assign(**tags)

    (g0, d0), (g1, d1) = measured(0), measured(10)
    history = pd.DataFrame({"step": [1, 2], "epoch": [0, 0], "elbo": [-5.0, -4.0],
                            "beta": [1.0, 1.0], "time_s": [0.1, 0.2]})
    sites = pd.DataFrame({"site": ["z"], "kl": ["sampled"]})
    final = {"test_elbo": test_elbo, "log_likelihood": test_elbo + 1, "train_elbo": -4.0}
    return RunRecord(estimator, seed, final, [g0, g1], [d0, d1], {0: -9.0, 2: test_elbo},
                     history, sites)


def test_tables_from_records():
    records = [record("sampled", 0, -10.0, 4.0), record("analytic", 0, -9.0, 1.0),
               record("sampled", 1, -12.0, 6.0), record("analytic", 1, -10.0, 3.0)]
    tables = assemble(records, ["sampled", "analytic"])
    summary = tables["summary"].set_index("estimator")
    assert summary.loc["sampled", "test_elbo"] == -11.0
    assert summary.loc["sampled", "test_elbo_sd"] == pytest.approx(math.sqrt(2))
    assert summary.loc["analytic", "encoder_variance_init"] == 2.0  # mean of 1 and 3 at step 0
    assert summary.loc["analytic", "encoder_variance_final"] == 22.0  # ×11 at step 10
    assert summary.loc["sampled", "elbo_sd_init"] == pytest.approx(math.sqrt(2))
    diff = tables["differences"].set_index("metric").loc["test_elbo"]
    assert diff["difference"] == 1.5 and diff["seeds"] == 2  # paired: +1 and +2
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.5) / math.sqrt(2)
    assert diff["ci_low"] == pytest.approx(1.5 - half)
    assert diff["ci_high"] == pytest.approx(1.5 + half)
    curve = tables["curves"]
    first = curve[(curve["estimator"] == "sampled") & (curve["seed"] == 0)]
    assert first["step"].tolist() == [0, 1, 2]
    assert first["test_elbo"].tolist()[::2] == [-9.0, -10.0]
    assert tables["estimates"]["elbo_mean"].eq(-2.0).all()
    assert list(tables["sites"]["estimator"]) == ["sampled", "analytic"]  # first seed's sites
