"""The one scoring path: ppl_vae's numbers are what Pyro's Trace_ELBO sums, split per row.

Truths: Pyro's own importance weights (``vectorized_importance_weights``: per particle, the
model trace's ``log_prob_sum`` minus the guide trace's) at the same parameters, compared within
Monte Carlo error (5 standard errors: a false failure has probability below 1e-6 per check), and
exact identities where nothing is random.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.importance import vectorized_importance_weights

import ppl_vae
from ppl_vae.estimators import particles
from ppl_vae.estimators.terms import _cat_dicts
from ppl_vae.pair.traces import is_guide_sample
from ppl_vae.training.preflight import is_fixed
from ppl_vae.utils import params

K = 4000


def pyro_elbo(model, guide, *args, num_samples=K):
    """Pyro's ELBO of the whole data and its standard error, from its own log weights."""
    with torch.no_grad():
        log_w, _, _ = vectorized_importance_weights(
            model, guide, *args, num_samples=num_samples, max_plate_nesting=2
        )
    return float(log_w.mean()), float(log_w.std() / math.sqrt(num_samples))


def agree(ours: dict, theirs: tuple[float, float]) -> bool:
    return abs(ours["elbo"] - theirs[0]) < 5 * math.hypot(ours["elbo_se"], theirs[1])


# a guide whose z is a Delta at an affine map of an auxiliary u, its log-Jacobian a factor
# (pyro.factor's docstring: has_rsample=True for such a factor in the guide)
def flow_model(x):
    w = pyro.param("w", torch.ones(x.shape[-1]))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1) * w, 1.0).to_event(1), obs=x)


def flow_guide(x):
    a = pyro.param("a", torch.tensor(0.3))
    with pyro.plate("data", x.shape[0]):
        u = pyro.sample("u", dist.Normal(x.sum(-1) * a, 1.0), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Delta(2.0 * u))
        pyro.factor("log_jacobian", -math.log(2.0) * torch.ones_like(u), has_rsample=True)


@pytest.fixture
def flow_data():
    pyro.clear_param_store()
    return torch.randn(30, 4, generator=torch.Generator().manual_seed(0))


def test_a_guide_factor_counts_in_log_q_as_trace_elbo_subtracts_it(flow_data):
    terms = ppl_vae.evaluate(flow_model, flow_guide, flow_data, num_particles=K,
                             estimator="sampled", seed=0)
    assert agree(terms.attrs["joint"], pyro_elbo(flow_model, flow_guide, flow_data))
    # the factor is its own log q column: log 2 ... with a minus sign, per row, exactly
    assert np.allclose(terms["kl[log_jacobian]"], -math.log(2.0), atol=1e-6)
    assert terms.attrs["kl_method"]["log_jacobian"] == "log q term (guide factor or observed)"
    assert np.allclose(terms["elbo"], terms["reconstruction"] - terms["kl"])
    # the importance weights carry it too: their mean is Pyro's ELBO
    weights = ppl_vae.importance_log_weights(flow_model, flow_guide, flow_data, num_samples=K,
                                             seed=1).sum(1).double()
    ours = {"elbo": float(weights.mean()), "elbo_se": float(weights.std() / math.sqrt(K))}
    assert agree(ours, pyro_elbo(flow_model, flow_guide, flow_data))
    result = ppl_vae.fit(flow_model, flow_guide, flow_data, num_steps=3, estimator="sampled")
    sites = result.sites.set_index("site")["kl"]
    assert sites["log_jacobian"] == "log q term (guide factor or observed)"


def test_a_site_left_out_of_the_split_is_refused_not_reported(flow_data, monkeypatch):
    """The net under the split: were the guide's factor dropped (the old rule, log q over the
    drawn sites only), the terms no longer add up to Pyro's sum and nothing is returned."""
    monkeypatch.setattr(particles, "is_guide_term", is_guide_sample)
    with pytest.raises(ppl_vae.ScoringError, match="Trace_ELBO sum of the same traces"):
        ppl_vae.evaluate(flow_model, flow_guide, flow_data, num_particles=10, seed=0)


def test_parts_without_a_site_contribute_zeros_over_their_rows():
    a = {"z": torch.ones(2, 3), "c": None}
    b = {"z": torch.ones(2, 1), "y": torch.full((2, 1), 2.0)}
    merged = _cat_dicts([a, b], 1, [3, 1])
    assert torch.equal(merged["y"], torch.tensor([[0.0, 0, 0, 2], [0, 0, 0, 2]]))
    assert merged["z"].shape == (2, 4) and merged["c"] is None


def test_supports_that_depend_on_the_batch_are_told_apart():
    assert is_fixed(dist.Bernoulli(torch.full((3,), 0.5)).to_event(1).support)
    assert is_fixed(dist.Poisson(1.0).support)
    assert not is_fixed(dist.Multinomial(3, torch.ones(3)).support)
    assert not is_fixed(dist.Binomial(4, 0.5).support)


def lda_pair(vocabulary: int, topics: int):
    """ProdLDA's likelihood: a Multinomial whose total_count is the batch's longest document."""
    encoder, decoder = torch.nn.Linear(vocabulary, 2 * topics), torch.nn.Linear(topics,
                                                                                vocabulary)

    def model(docs):
        pyro.module("decoder", decoder)
        with pyro.plate("documents", docs.shape[0]):
            theta = pyro.sample("theta", dist.Normal(docs.new_zeros(topics), 1.0).to_event(1))
            count = int(docs.sum(-1).max())
            pyro.sample("obs", dist.Multinomial(count, logits=decoder(theta.softmax(-1))),
                        obs=docs)

    def guide(docs):
        pyro.module("encoder", encoder)
        with pyro.plate("documents", docs.shape[0]):
            h = encoder(docs)
            pyro.sample("theta", dist.Normal(h[..., :topics], h[..., topics:].exp()).to_event(1))

    return model, guide


def test_a_support_set_by_each_batch_is_checked_against_that_batch():
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    docs = torch.zeros(40, 6)
    for n, length in enumerate([3] * 32 + [8] * 8):  # the longest documents come last
        docs[n].index_add_(0, torch.randint(0, 6, (length,), generator=gen), torch.ones(length))
    model, guide = lda_pair(6, 2)
    result = ppl_vae.fit(model, guide, docs, num_steps=10, batch_size=16, seed=0)
    assert np.isfinite(result.history["elbo"]).all()
    bad = docs.clone()
    bad[39, 0] = -1.0  # outside every Multinomial's support, in the last batch
    for validate in (False, True):  # checked at the step either way, and nothing applied
        pyro.clear_param_store()
        with pytest.raises(ppl_vae.DataError, match=r"^training stopped at step \d+: (a )?value "
                           r"(\[-1\.0, .*\] )?observed .* outside the support[^\n]*$"):  # fmt: skip
            ppl_vae.fit(model, guide, bad, num_steps=10, batch_size=16, seed=0,
                        validate_every_step=validate)


def test_forgetting_one_name_of_a_tensor_under_two_keeps_the_store_consistent():
    """``pyro.module("decoder", vae.decoder)`` and ``pyro.module("vae", vae)`` register one
    tensor under two names; forgetting either (as every comparison run does with the
    parameters it created) leaves the other name and its reverse map intact."""
    pyro.clear_param_store()
    vae = torch.nn.ModuleDict({"decoder": torch.nn.Linear(2, 3)})
    pyro.module("decoder", vae["decoder"])
    pyro.module("vae", vae)
    store = pyro.get_param_store()
    params.forget(["decoder$$$weight", "decoder$$$bias"])
    assert sorted(store.keys()) == ["vae$$$decoder.bias", "vae$$$decoder.weight"]
    for name in store.keys():
        assert store.param_name(store._params[name]) == name
    params.forget(list(store.keys()))
    assert not list(store.keys()) and not store._param_to_name


def test_per_row_parameters_loaded_for_other_rows_say_which_rows(tmp_path):
    pyro.clear_param_store()
    pyro.param("z_loc", torch.zeros(200, 10))
    ppl_vae.save_params(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.param("z_loc", torch.zeros(2, 10))
    with pytest.raises(ppl_vae.CheckpointError, match=r"one entry per row.*the 200 rows it "
                       r"was trained on"):  # fmt: skip
        ppl_vae.load_params(tmp_path / "params.pt")


def factor_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", -0.1 * z**2)
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)


def factor_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.1 * x.sum(-1), 1.0))


def test_calibration_refuses_a_model_with_a_factor():
    """Drawing from a model forward ignores its factors: the simulated data would not be from
    the model being fitted, so SBC refuses instead of ranking against the wrong prior."""
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ppl_vae.PairError, match=r"pyro\.factor term\(s\) \['penalty'\]"):
        ppl_vae.calibration(factor_model, factor_guide, x, num_simulations=10, num_draws=9)
