"""A registered Estimator record works in every entry point, measured by its own rules."""

import pyro
import pytest

import ppl_vae
from models import bernoulli_vae
from ppl_vae.estimators import AnalyticELBO, Estimator, register


class MyMeanField(AnalyticELBO):
    """A user's own mean-field ELBO: the analytic one under another name."""


@pytest.fixture
def registered():
    record = register(Estimator("my_mf", MyMeanField, "a user's mean-field ELBO",
                                closed_form_kl=True, requires_reparameterized=True))
    yield record
    del ppl_vae.ESTIMATORS["my_mf"]


def test_a_registered_estimator_is_measured_by_its_own_kl_rule(registered, binary_digits):
    x_train, x_test = binary_digits
    pair = bernoulli_vae.make_pair(x_dim=64, z_dim=2, hidden=16)
    cmp = ppl_vae.compare_estimators(
        pair.model, pair.guide, x_train[:256], x_test[:64], estimators=("analytic", "my_mf"),
        seeds=(0,), num_steps=8, batch_size=64, num_draws=4, num_checkpoints=1, num_evals=1,
        ll_samples=10, gap_rows=0, modules=pair.modules,
    )
    sites = cmp.sites.set_index("estimator")
    assert sites.loc["my_mf", "kl"] == "closed-form"
    draws = cmp.draws[cmp.draws["run"] == "my_mf"]
    mine, analytic = (draws[draws["estimator"] == e]["elbo"].to_numpy()
                      for e in ("my_mf", "analytic"))
    assert (mine == analytic).all()  # the same draws scored by the same (closed-form) rule
    runs = cmp.runs.set_index("estimator")
    assert runs.loc["my_mf", "test_elbo"] == pytest.approx(runs.loc["analytic", "test_elbo"])
    pyro.clear_param_store()
    terms = ppl_vae.evaluate(pair.model, pair.guide, x_test[:8], 5, estimator="my_mf", seed=0)
    assert terms.attrs["kl_method"] == {"z": "closed-form"}
    assert isinstance(registered.make(), MyMeanField)


def test_only_records_can_be_registered():
    with pytest.raises(ppl_vae.EstimatorError, match="register an Estimator record"):
        register(pyro.infer.Trace_ELBO)
