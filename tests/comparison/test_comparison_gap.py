"""The comparison's gap split per estimator against pPCA's closed forms at each run's final
parameters, its paired differences and its lines in the report."""

import numpy as np
import pyro
import torch

from models import linear_gaussian
from ppl_vae import compare_estimators
from ppl_vae.comparison.report import markdown
from tests.comparison.test_comparison import TINY
from tests.evaluation.test_gap import truths
from tests.pairs import delta_pair, ppca_rows


def test_gap_split_per_estimator_matches_the_closed_forms():
    x = ppca_rows(4)
    pair = linear_gaussian.make_pair(x_dim=5, z_dim=2)
    at_gap = []

    def exact(rows):
        if len(rows) == 10:  # the gap split's rows, at the run's final parameters
            at_gap.append(truths(rows))
        return linear_gaussian.exact_log_likelihood(rows)

    settings = TINY | {"num_steps": 60, "gap_rows": 10, "gap_steps": 150}
    c = compare_estimators(*pair, x[:120], x[120:], exact_log_likelihood=exact, lr=0.05,
                           **settings)
    assert len(at_gap) == len(c.runs) == 4
    runs = c.runs
    approximation = np.array([t[0] for t in at_gap])
    amortization = np.array([t[1].mean() for t in at_gap])
    assert (approximation >= 0).all()
    assert (np.abs(runs["approximation_gap"] - approximation)
            < 4 * runs["approximation_gap_se"] + 0.005).all()
    assert (np.abs(runs["amortization_gap"] - amortization)
            < 4 * runs["amortization_gap_se"] + 0.005).all()
    metrics = set(c.differences["metric"])
    assert {"amortization_gap", "approximation_gap"} <= metrics
    report = markdown(c)
    assert ("sampled: of log p(x) − ELBO on the first 10 held-out rows, the amortization gap"
            in report)
    assert "amortization gap between analytic and sampled" in report or (
        "**analytic** left a" in report)
    assert "amortization gap" in report.split("## Headline")[1].split("##")[0]


def test_a_pair_without_the_split_says_why():
    model, guide = delta_pair(4)
    x = torch.randn(60, 4)
    c = compare_estimators(model, guide, x[:40], x[40:], **(TINY | {"seeds": (0,)}))
    assert "amortization_gap" not in c.runs.columns
    assert "is a Delta" in c.settings["gap_skipped"]
    assert "No amortization/approximation split: guide site 'z' is a Delta" in markdown(c)
    pyro.clear_param_store()
