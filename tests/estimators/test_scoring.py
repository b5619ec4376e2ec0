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
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights

import ppl_vae
from ppl_vae.estimators import particles
from ppl_vae.estimators.particles import _cat_dicts
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


def markov_model(seqs, lengths):
    """Sequences of different lengths: one z_t per step up to the batch's longest, masked."""
    a = pyro.param("a", torch.tensor(0.5))
    with pyro.plate("data", seqs.shape[0]):
        z = seqs.new_zeros(seqs.shape[0])
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=t < lengths):
                z = pyro.sample(f"z_{t}", dist.Normal(a * z, 1.0))
                pyro.sample(f"x_{t}", dist.Normal(z, 0.5), obs=seqs[:, t])


def markov_guide(seqs, lengths):
    b = pyro.param("b", torch.tensor(0.3))
    with pyro.plate("data", seqs.shape[0]):
        for t in pyro.markov(range(int(lengths.max()))):
            with poutine.mask(mask=t < lengths):
                pyro.sample(f"z_{t}", dist.Normal(b * seqs[:, t], 0.8))


def test_sites_that_differ_between_batches_give_the_same_numbers_at_any_batch_size():
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    seqs, lengths = torch.randn(12, 6, generator=gen), torch.tensor([2] * 4 + [6, 3] * 4)
    truth = pyro_elbo(markov_model, markov_guide, seqs, lengths)
    for batch_size in (12, 3):
        for estimator in ("sampled", "analytic"):
            terms = ppl_vae.evaluate(markov_model, markov_guide, (seqs, lengths),
                                     num_particles=K, estimator=estimator, seed=0,
                                     batch_size=batch_size)
            assert agree(terms.attrs["joint"], truth), (batch_size, estimator)
            # rows of length 2 have no z_5: their column is 0, not missing
            assert (terms["kl[z_5]"][:4] == 0).all() and (terms["kl[z_5]"][4::2] != 0).all()
        weights = ppl_vae.importance_log_weights(markov_model, markov_guide, (seqs, lengths),
                                                 num_samples=K, seed=1, batch_size=batch_size)
        joint = weights.sum(1).double()
        ours = {"elbo": float(joint.mean()), "elbo_se": float(joint.std() / math.sqrt(K))}
        assert agree(ours, truth)
        khat = ppl_vae.vi_diagnostics(markov_model, markov_guide, (seqs, lengths),
                                      num_samples=200, seed=0, batch_size=batch_size)
        assert len(khat) == 12


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
        with pytest.raises(ppl_vae.DataError, match=r"^training stopped at step \d+: a value "
                           r"observed .* outside the support"):  # fmt: skip
            ppl_vae.fit(model, guide, bad, num_steps=10, batch_size=16, seed=0,
                        validate_every_step=validate)


def test_one_module_under_two_names_runs_through_every_entry_point():
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(40, 5)
    vae = torch.nn.ModuleDict({"encoder": torch.nn.Linear(5, 4),
                               "decoder": torch.nn.Linear(2, 5)})

    def model(x):
        pyro.module("decoder", vae["decoder"])
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(vae["decoder"](z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("vae", vae)
        with pyro.plate("data", x.shape[0]):
            h = vae["encoder"](x)
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))

    comparison = ppl_vae.compare_estimators(model, guide, x, x[:10], num_steps=4, seeds=(0,),
                                            batch_size=20, modules=[vae])
    assert np.isfinite(comparison.summary["test_elbo"]).all()
    store = pyro.get_param_store()
    names = [n for n in store.keys() if "decoder" in n]
    params.forget(names[:1])  # a tensor that stays under its other name keeps its reverse map
    for name in store.keys():
        assert store.param_name(store._params[name]) in store.keys()


def test_row_numbers_and_masks_pass_as_integers_and_bools():
    """A non-amortized guide indexes its per-row parameters by int64 row numbers passed as
    data, and a bool array masks the rows without a label (Pyro's SVI passes both as given)."""
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    n = 24
    x, idx = torch.randn(n, generator=gen), torch.arange(n)
    labelled = torch.arange(n) % 3 == 0

    def model(x, idx, labelled):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)
            with poutine.mask(mask=labelled):
                pyro.sample("y", dist.Normal(z, 1.0), obs=x)

    def guide(x, idx, labelled):
        loc = pyro.param("z_loc", torch.zeros(n))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc[idx], 0.5))

    data = (x, idx, labelled)
    ppl_vae.fit(model, guide, data, num_steps=200, lr=0.05, batch_size=8, seed=0)
    terms = ppl_vae.evaluate(model, guide, data, num_particles=K, estimator="sampled", seed=0,
                             batch_size=5)
    assert agree(terms.attrs["joint"], pyro_elbo(model, guide, *data))
    # the posterior of z_n given x_n, with the masked second observation on a third of rows
    prec = 1 + 4 + labelled.double()
    exact_loc = (4 + labelled.double()) * x.double() / prec
    fitted = pyro.param("z_loc").detach().double()  # after a noisy SGD: near, not at
    assert float((fitted - exact_loc).abs().max()) < 0.35
    assert float(torch.corrcoef(torch.stack([fitted, exact_loc]))[0, 1]) > 0.97


def export_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.deterministic("z_sum", z.sum(-1))
        pyro.factor("penalty", -0.1 * (z**2).sum(-1))
        loc = z.sum(-1, keepdim=True).expand(*z.shape[:-1], x.shape[-1])
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def export_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.1 * x[..., :2], 1.0).to_event(1))


def test_export_has_deterministic_sites_and_no_factor_as_data():
    pyro.clear_param_store()
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    idata = ppl_vae.to_inference_data(export_model, export_guide, x, num_samples=30)
    assert idata.posterior["z_sum"].dims == ("chain", "draw", "obs")
    assert np.allclose(idata.posterior["z_sum"], idata.posterior["z"].sum("z_dim_0"))
    assert list(idata.observed_data.data_vars) == ["x"]
    assert list(idata.log_likelihood.data_vars) == ["x"]
    assert list(idata.posterior_predictive.data_vars) == ["x"]
    terms = ppl_vae.evaluate(export_model, export_guide, x, num_particles=K,
                             estimator="sampled", seed=0)
    assert terms.attrs["factors"] == ["penalty"]
    assert agree(terms.attrs["joint"], pyro_elbo(export_model, export_guide, x))


def test_per_row_parameters_loaded_for_other_rows_say_which_rows(tmp_path):
    pyro.clear_param_store()
    pyro.param("z_loc", torch.zeros(200, 10))
    ppl_vae.save_params(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.param("z_loc", torch.zeros(2, 10))
    with pytest.raises(ppl_vae.CheckpointError, match=r"one entry per row.*the 200 rows it "
                       r"was trained on"):  # fmt: skip
        ppl_vae.load_params(tmp_path / "params.pt")
