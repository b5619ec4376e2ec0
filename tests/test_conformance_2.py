"""Conformance, second set: pairs written from Pyro's examples and tutorials in their idioms,
checked against Pyro's own estimators at the same parameters.

The pairs live in ``tests/conformance/`` (one module each, its docstring naming the example and
what was changed): the deep Markov model (``pyro.markov`` up to the minibatch's longest sequence,
masks, KL annealing, with and without an IAF guide), ProdLDA, the CVAE example,
PyroModule/PyroSample networks, a conditional normalizing-flow guide, non-amortized per-row
parameters indexed by int64 row numbers, Dirichlet latents with a conjugate guide, the
generative ``model(x=None)``, a semi-supervised pair with two observed sites and a bool mask
in ``poutine.mask``, ``obs_mask=`` imputation, a hierarchical model with nested plates, one
network registered under two names, a guide ``pyro.factor`` carrying a log-Jacobian, the
Bayesian-regression tutorial's pair (it does not broadcast over particles), the eight schools,
and a mixture prior summed out of the model with ``Vindex``.

Each pair starts from its own first run under a fixed seed and takes a few steps of Pyro's SVI
(so the parameters are away from their start whatever ppl_vae's ``fit`` does); then the checks of
``tests/corpus/checks.py`` apply where the pair says they do, one per test
(``test_ppl_vae_agrees_with_pyro[CHECK-PAIR]``): joint ELBO against
``Trace_ELBO``/``TraceMeanField_ELBO``/``TraceEnum_ELBO``, importance weights against
``vectorized_importance_weights``, row ELBOs against Pyro on each row alone, the numbers at small
evaluation batch sizes, diagnostics and ArviZ export; and ``fit`` takes steps on minibatches
where Pyro's SVI does. Further tests reproduce each failure of issue 20 with its truth.
Tolerances: 5 combined Monte Carlo standard errors (``tests.corpus.truth.SIGMAS``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import numpy as np
import pyro
import pytest
import torch

from tests.conformance import (
    bayesian_regression,
    cvae,
    dirichlet_topics,
    dmm,
    eight_schools,
    flow_guide,
    generative,
    guide_factor,
    hierarchical,
    imputation,
    mixture_prior,
    nonamortized,
    prodlda,
    pyromodule_vae,
    semi_supervised,
    shared_module,
    take_rows,
)
from tests.corpus import CHECKS, CorpusPair, checks, generate, initialize, truth

logging.getLogger("pyro").setLevel(logging.WARNING)
pytestmark = pytest.mark.usefixtures("one_thread")


def cvae_pair() -> CorpusPair:
    """The CVAE example as ``tests/conformance/cvae.py`` writes it (unsized data plate)."""
    pair = cvae.pair(rows=40)
    return CorpusPair(
        name="cvae", source=cvae.SOURCE, idioms=("unsized plate", "data:tuple"),
        model=pair.model, guide=pair.guide, data=pair.data, model_kwargs=None,
        max_plate_nesting=1, global_latents=False,
        skips={"enum": "no site is marked for enumeration"}, fit_batch_size=8,
    )


CASES: dict[str, Callable[[], CorpusPair]] = {
    "dmm": dmm.pair,
    "dmm[iaf]": lambda: dmm.pair(num_iafs=1),
    "prodlda": prodlda.pair,
    "cvae": cvae_pair,
    "pyromodule_vae": pyromodule_vae.pair,
    "flow_guide": flow_guide.pair,
    "nonamortized": nonamortized.pair,
    "dirichlet_topics": dirichlet_topics.pair,
    "generative": generative.pair,
    "generative[keyword]": lambda: generative.pair(by_keyword=True),
    "semi_supervised": semi_supervised.pair,
    "imputation": imputation.pair,
    "hierarchical": hierarchical.pair,
    "shared_module": shared_module.pair,
    "guide_factor": guide_factor.pair,
    "bayesian_regression": bayesian_regression.pair,
    "eight_schools": eight_schools.pair,
    "mixture_prior": mixture_prior.pair,
}
EXTRA = {"markov(corpus c20)": lambda: generate(20)}  # for the tests of issue 20 only
PROBE = {name: build() for name, build in CASES.items()}  # what applies to which pair


EVERY_PAIR = pytest.mark.parametrize("name", list(PROBE))


def ready(name: str, steps: int = 5) -> CorpusPair:
    """The pair ``name`` from its first run, after ``steps`` steps of Pyro's SVI on all rows."""
    pair = (CASES | EXTRA)[name]()
    initialize(pair)
    with torch.random.fork_rng():
        pyro.set_rng_seed(1)
        for _ in range(steps):
            truth.svi_steps(pair, lr=1e-2)
    return pair


# =============================================================================================
# Truths, with Pyro only
# =============================================================================================


@EVERY_PAIR
def test_truth_pyro_estimators_agree_on_the_same_elbo(name):
    pair = ready(name)
    checks.check_truths(pair, pair.extras.get("particles", 300))


@EVERY_PAIR
def test_truth_pyro_svi_steps_on_the_minibatches(name):
    # the data is valid on every minibatch: Pyro's SVI steps on each (the DMM's first batches
    # lack the longest sequence, ProdLDA's the longest document)
    pair = ready(name, steps=0)
    truth.svi_steps(pair, pair.fit_batch_size, max_batches=10)


def test_truth_pyro_svi_steps_a_tensor_registered_under_two_names_once():
    # shared_module: the decoder's weights are in the param store twice, one tensor
    pair = ready("shared_module", steps=0)
    store = pyro.get_param_store()
    ids = [id(store[n].unconstrained()) for n in store.keys()]
    assert len(set(ids)) < len(ids), list(store.keys())
    before = {n: store[n].unconstrained().detach().clone() for n in store.keys()}
    truth.svi_steps(pair, lr=0.01)  # Adam's first step moves each element by at most lr
    for n, value in before.items():
        assert (store[n].unconstrained().detach() - value).abs().max() <= 0.01 * (1 + 1e-4), n


# =============================================================================================
# ppl_vae against the truths
# =============================================================================================


CASES_CHECKED = [(c, n) for c in CHECKS for n, p in PROBE.items() if p.applies(c)]


@pytest.mark.parametrize(("check", "name"), CASES_CHECKED)
def test_ppl_vae_agrees_with_pyro(pv, check, name):
    # one check of tests/corpus/checks.py on one pair, after a few steps of Pyro's SVI
    checks.run(pv, ready(name), check)


# =============================================================================================
# The failures of issue 20, each with its truth
# =============================================================================================


def row_iwae(pair: CorpusPair, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Pyro's K-sample IWAE estimate of log p(x_n) per row (mean and sd of the estimator, by
    resampling 4K weights of ``vectorized_importance_weights`` on that row alone)."""
    rows = [truth.iwae(truth.log_weights(pair, 4 * num_samples, data=take_rows(
        pair.data, torch.tensor([n]))), num_samples) for n in range(pair.num_rows)]
    return np.array([m for m, _ in rows]), np.array([s for _, s in rows])


def test_guide_factor_counts_in_evaluate_log_likelihood_and_diagnostics(pv):
    # issue 20, item 1: a guide pyro.factor (the log-Jacobian next to a Delta site) is part of
    # log q: Trace_ELBO subtracts it, and so must every number of ppl_vae
    pair = ready("guide_factor")
    checks.check_joint(pv, pair, "sampled")
    k = 500
    ref, sd = row_iwae(pair, k)
    ours = pv.log_likelihood(pair.model, pair.guide, pair.data, k, seed=3).to_numpy()
    table = pv.vi_diagnostics(pair.model, pair.guide, pair.data, k, seed=4)
    band = truth.SIGMAS * math.sqrt(float((sd**2).sum())) + 1e-3
    for what, values in (("log_likelihood", ours),
                         ("vi_diagnostics log_likelihood", table["log_likelihood"].to_numpy())):
        assert abs(values.sum() - ref.sum()) <= band, (
            f"{pair.describe()}: Σ_n {what} ppl_vae {values.sum():.3f}, Pyro's IWAE per row "
            f"summed {ref.sum():.3f} (band {band:.3f})")


@pytest.mark.parametrize("name", ["dmm[iaf]", "markov(corpus c20)"])
def test_variable_length_log_likelihood_and_diagnostics_at_any_batch_size(pv, name):
    # issue 20, item 2: the DMM's sites z_t go up to the minibatch's longest sequence (the
    # corpus's Markov chain the same, with float-safe index arithmetic); log_likelihood and
    # vi_diagnostics give the same rows at batch sizes N and 3, those of Pyro's IWAE per row
    pair = ready(name)
    k = 300
    ll = {b: pv.log_likelihood(pair.model, pair.guide, pair.data, k, batch_size=b, seed=5,
                               model_kwargs=pair.model_kwargs).to_numpy()
          for b in (pair.num_rows, 3)}
    ref, sd = row_iwae(pair, k)
    for b, values in ll.items():
        bad = [n for n in range(pair.num_rows)
               if not truth.agree(values[n], ref[n], sd[n], sd[n], atol=0.01)]
        assert not bad, (f"{pair.describe()}: log_likelihood at batch_size={b} against Pyro's "
                         f"per-row IWAE: rows {bad}")
    tables = [pv.vi_diagnostics(pair.model, pair.guide, pair.data, k, batch_size=b, seed=6,
                                model_kwargs=pair.model_kwargs) for b in (pair.num_rows, 3)]
    assert len(tables[1]) == pair.num_rows
    np.testing.assert_allclose(tables[0]["log_likelihood"], tables[1]["log_likelihood"],
                               atol=truth.SIGMAS * float(np.sqrt(2) * sd.max()) + 0.01)


def test_prodlda_fit_checks_each_row_against_its_own_minibatch(pv):
    # issue 20, item 3: total_count is the minibatch's longest document, so the support of
    # each row is that of its own batch; valid data trains (Pyro's SVI steps on every batch:
    # test_truth_pyro_svi_steps_on_the_minibatches), and data that is really invalid is
    # refused naming its own value, not a harmless one
    pair = ready("prodlda", steps=0)
    checks.check_fit(pv, pair, batch_size=8)
    docs = pair.data.clone()
    docs[20, 3] = -1.0  # a negative count, in the third minibatch
    with pytest.raises(pv.PplVaeError) as refused:
        pv.fit(pair.model, pair.guide, docs, num_steps=3, batch_size=8, seed=0)
    assert "-1" in str(refused.value), str(refused.value)


def test_compare_estimators_with_one_network_under_two_names(pv):
    # issue 20, item 4: pyro.module("decoder", vae.decoder) in the model and
    # pyro.module("vae", vae) in the guide; Pyro's SVI takes it (the truth test above). Called
    # as a user calls it: on a fresh param store, two tiny runs
    pair = CASES["shared_module"]()
    comparison = pv.compare_estimators(
        pair.model, pair.guide, pair.data, estimators=("sampled",), seeds=(0, 1),
        num_steps=4, batch_size=8, num_draws=2, num_checkpoints=1, num_evals=1,
        eval_particles=2, final_particles=8, ll_samples=16, gap_rows=0,
        modules=pair.extras["modules"],
    )
    assert len(comparison.runs) == 2
    assert np.isfinite(comparison.runs["test_elbo"]).all()


def test_per_row_arrays_reach_the_pair_as_given(pv):
    # issue 20, item 5: int64 row numbers index a per-row parameter, bool masks enter
    # poutine.mask and ~mask; Pyro's SVI passes arrays as given, and so must ppl_vae
    seen = []

    def model(x, idx, keep):
        seen.append((idx.dtype, keep.dtype))
        loc = pyro.param("loc", lambda: torch.zeros(10))[idx]
        with pyro.plate("data", x.shape[0]), pyro.poutine.mask(mask=keep):
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0), obs=x)

    def guide(x, idx, keep):
        seen.append((idx.dtype, keep.dtype))

    data = (torch.randn(10), torch.arange(10), torch.arange(10) % 3 != 0)
    pv.fit(model, guide, data, num_steps=2, batch_size=4, seed=0)
    pv.evaluate(model, guide, data, 4, batch_size=3, seed=0)
    assert set(seen) == {(torch.int64, torch.bool)}, set(seen)


def test_npz_data_files_keep_their_integer_and_bool_arrays(pv, tmp_path):
    # issue 20, item 5: "the CLI's file loading keeps what the file holds"
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((4, 2), np.float32), idx=np.arange(4), has_y=np.ones(4, bool))
    arrays = pv.pair.data.load_arrays(path)
    assert {k: v.dtype for k, v in arrays.items()} == {
        "x": torch.float32, "idx": torch.int64, "has_y": torch.bool}


def test_export_has_deterministic_sites_and_no_factor_as_data(pv):
    # issue 20, item 6: a pyro.deterministic site is in posterior; a model pyro.factor is not
    # data (observed_data, posterior_predictive) nor a log-likelihood
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            pyro.deterministic("z2", z**2, event_dim=0)
            pyro.factor("penalty", -0.1 * z**2)
            pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(0.5 * x, 0.8))

    pair = CorpusPair(name="factor+deterministic", idioms=("factor:model-local",
                                                           "deterministic"),
                      model=model, guide=guide, data=torch.randn(12), model_kwargs=None,
                      max_plate_nesting=1, global_latents=False, factors=("penalty",),
                      deterministic=("z2",))
    checks.check_export(pv, pair)
    checks.check_joint(pv, pair, "sampled")  # the factor counts in the ELBO


def test_cli_diagnose_of_a_guide_with_per_row_parameters_says_so(tmp_path, capsys):
    # issue 20, item 6: a guide with one parameter per training row (sized by the data it
    # first saw, as in Pyro's SVI tutorials) trained on all N rows; diagnose must work or say
    # that the guide has per-row parameters and which rows it needs, not "load it into the
    # pair it came from" (the user did)
    from ppl_vae.cli import main

    (tmp_path / "pair.py").write_text(NONAMORTIZED_PAIR_FILE)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(30, 4)).astype("float32"))
    code = main(["train", "--model", str(tmp_path / "pair.py"), "--data",
                 str(tmp_path / "x.npy"), "--steps", "3", "--batch-size", "30", "--out",
                 str(tmp_path / "run"), "--no-progress"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    code = main(["diagnose", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "diag"),
                 "--split", "train", "--rows", "3", "--samples", "10", "--khat-samples", "20",
                 "--sbc-simulations", "0", "--gap-rows", "0"])  # fmt: skip
    printed = capsys.readouterr()
    message = printed.out + printed.err
    if code != 0:
        assert "load it into the pair it came from" not in message, message
        assert re.search(r"per[- ]row", message) and "30" in message, message


NONAMORTIZED_PAIR_FILE = '''
import pyro, pyro.distributions as dist, torch
from pyro.distributions import constraints
from ppl_vae import ModelGuidePair


def make_pair(x_dim):
    def model(x):
        w = pyro.param("w", lambda: torch.randn(x_dim, 2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("z_loc", lambda: torch.zeros(x.shape[0], 2))
        scale = pyro.param("z_scale", lambda: torch.ones(x.shape[0], 2),
                           constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return ModelGuidePair(model, guide, name="per_row_guide")
'''
