"""Property test over the generated corpus: every number is what Pyro's estimators compute.

Each pair of ``tests/corpus`` (a seed per pair, see ``tests/corpus/generator.py``) composes Pyro
idioms; at the pair's starting parameters ppl_vae's numbers are compared with Pyro's own
(``tests/corpus/truth.py``), one check of ``tests/corpus/checks.py`` per test
(``test_ppl_vae_agrees_with_pyro[CHECK-PAIR-THEME]``, the failure naming the pair's idioms):

- ``evaluate(estimator="sampled").attrs["joint"]["elbo"]`` with ``-Trace_ELBO().loss``,
  ``"analytic"`` with ``TraceMeanField_ELBO`` where it is the same objective, ``"enum"`` with
  ``TraceEnum_ELBO`` where sites are marked for enumeration;
- the importance log weights of the whole data set (``importance_log_weights`` summed over
  the rows, or ``ppl_vae.evaluation.evaluation.log_weights(...).joint`` with global latents) with
  ``vectorized_importance_weights``: their mean (the ELBO) and their log-mean-exp (the
  K-sample estimate of log p(X));
- with only local latents, row n's ELBO with Pyro's on the data of row n alone, and
  ``elbo == reconstruction − kl``, ``kl == Σ kl[site]``;
- the numbers at evaluation batch size N and at small ones, 3 and one whose last batch has one
  row (the first batch is not typical: the longest sequence comes last);
- ``vi_diagnostics`` and ``to_inference_data`` run, factors never appear as data or
  log-likelihood and ``pyro.deterministic`` sites appear in ``posterior``;
- ``fit`` takes a few steps on minibatches (the data is valid: Pyro's SVI steps on them).

Monte Carlo tolerances are 5 combined standard errors (``truth.SIGMAS``): a false failure has
probability 5.7e-7 per comparison. The draws are seeded, so a run is reproducible. The
``test_truth_*`` tests use Pyro only: they check that the truths are what they claim (the
estimators agree with each other and with log weights summed by hand where they target the
same ELBO). A pair that broadcasts over particles in Pyro must do so in ppl_vae: its
``ParticleLoopWarning`` is an error here.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tests.conformance import call_args
from tests.corpus import CHECKS, SEEDS, checks, generate, initialize, truth
from tests.corpus.checks import PARTICLES

logging.getLogger("pyro").setLevel(logging.WARNING)
pytestmark = pytest.mark.usefixtures("one_thread")
PAIRS = {seed: generate(seed) for seed in SEEDS}


EVERY_PAIR = pytest.mark.parametrize("seed", list(PAIRS), ids=[f"c{s:02d}" for s in PAIRS])


def _id(seed: int) -> str:
    from tests.corpus.generator import plan_for

    return f"{PAIRS[seed].name}-{plan_for(seed).theme}"


def ready(seed: int):
    """A fresh pair of ``seed`` with its parameters at their starting values."""
    pair = generate(seed)
    initialize(pair)
    return pair


# =============================================================================================
# Truths, with Pyro only
# =============================================================================================


def test_truth_corpus_covers_every_idiom():
    seen = {i.split("(")[0] for p in PAIRS.values() for i in p.idioms}
    wanted = {
        "plate:data", "plate:nested", "markov:variable-length", "data:tensor", "data:tuple",
        "data:dict", "dtype:float64", "data:int64", "data:bool", "guide:amortized",
        "guide:nonamortized", "guide:delta+factor", "guide:auxiliary", "guide:flow",
        "global:latent", "global:positive", "autoguide:AutoNormal",
        "autoguide:AutoDiagonalNormal", "autoguide:AutoDelta", "scale:annealing",
        "scale:likelihood", "discrete:score", "discrete:guide-enum", "discrete:model-enum",
        "factor:model-local", "factor:model-global", "deterministic", "mask:.mask",
        "mask:poutine.mask", "obs:two-sites", "obs_mask",
    }
    assert wanted <= seen, sorted(wanted - seen)
    for check in ("sampled", "analytic", "enum", "weights", "rows", "batch_size"):
        assert sum(p.applies(check) for p in PAIRS.values()) >= 2, check
    # deterministic: the same seed builds the same pair, data and parameters
    a, b = ready(3), ready(3)
    args_a, _ = call_args(a.data)
    args_b, _ = call_args(b.data)
    assert all(torch.equal(u, v) for u, v in zip(args_a, args_b, strict=True))


@EVERY_PAIR
def test_truth_pyro_estimators_agree_on_the_same_elbo(seed):
    checks.check_truths(ready(seed), PARTICLES // 3)


@EVERY_PAIR
def test_truth_pyro_svi_steps_on_the_minibatches(seed):
    # the data is valid for the pair on the minibatches ppl_vae's fit draws
    pair = ready(seed)
    truth.svi_steps(pair, pair.fit_batch_size)


# =============================================================================================
# ppl_vae against the truths
# =============================================================================================


CASES = [(check, s) for check in CHECKS for s, p in PAIRS.items() if p.applies(check)]


@pytest.mark.parametrize(("check", "seed"), CASES, ids=[f"{c}-{_id(s)}" for c, s in CASES])
def test_ppl_vae_agrees_with_pyro(pv, check, seed):
    # one check of tests/corpus/checks.py on one generated pair, at its starting parameters
    checks.run(pv, ready(seed), check)
