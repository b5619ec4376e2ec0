"""Property test over the generated corpus: every number is what Pyro's estimators compute.

Each pair of ``tests/corpus`` (a seed per pair, see ``tests/corpus/generator.py``) composes Pyro
idioms; at the pair's starting parameters ppl_vae's numbers are compared with Pyro's own
(``tests/corpus/truth.py``):

- ``evaluate(estimator="sampled").attrs["joint"]["elbo"]`` with ``-Trace_ELBO().loss``,
  ``"analytic"`` with ``TraceMeanField_ELBO`` where it is the same objective, ``"enum"`` with
  ``TraceEnum_ELBO`` where sites are marked for enumeration;
- the importance log weights of the whole data set (``importance_log_weights`` summed over
  the rows, or ``ppl_vae.evaluation.log_weights(...).joint`` with global latents) with
  ``vectorized_importance_weights``: their mean (the ELBO) and their log-mean-exp (the
  K-sample estimate of log p(X));
- with only local latents, row n's ELBO with Pyro's on the data of row n alone, and
  ``elbo == reconstruction − kl``, ``kl == Σ kl[site]``;
- the numbers at evaluation batch sizes N and 3 (the first batch of 3 rows is not typical:
  the longest sequence and masked rows come later);
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

import importlib
import logging
import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

from tests.conformance import call_args, take_rows
from tests.corpus import SEEDS, generate, initialize, truth

logging.getLogger("pyro").setLevel(logging.WARNING)
pytestmark = pytest.mark.usefixtures("one_thread")
PARTICLES = 1000  # ppl_vae's particles per evaluation, and Pyro's per truth
PAIRS = {seed: generate(seed) for seed in SEEDS}


def seeds(check: str | None = None):
    """The seeds of the pairs ``check`` applies to, with their names and themes as ids."""
    chosen = [s for s, p in PAIRS.items() if check is None or p.applies(check)]
    return pytest.mark.parametrize("seed", chosen, ids=[_id(s) for s in chosen])


def _id(seed: int) -> str:
    from tests.corpus.generator import plan_for

    return f"{PAIRS[seed].name}-{plan_for(seed).theme}"


@pytest.fixture
def pv():
    """ppl_vae, imported per test so that the Pyro-only truth tests run whatever its state."""
    module = importlib.import_module("ppl_vae")
    with warnings.catch_warnings():
        warnings.simplefilter("error", module.ParticleLoopWarning)
        warnings.filterwarnings("ignore", ".*TraceEnum_ELBO", UserWarning)
        yield module


def ready(seed: int):
    """A fresh pair of ``seed`` with its parameters at their starting values."""
    pair = generate(seed)
    initialize(pair)
    return pair


def evaluate(pv, pair, estimator: str, **options):
    options.setdefault("seed", 11)
    return pv.evaluate(pair.model, pair.guide, pair.data, PARTICLES, estimator=estimator,
                       model_kwargs=pair.model_kwargs, **options)


def joint(frame) -> tuple[float, float]:
    return float(frame.attrs["joint"]["elbo"]), float(frame.attrs["joint"]["elbo_se"])


def compare_joint(pair, frame, kind: str, ref: tuple[float, float], what: str) -> None:
    """ppl_vae's joint ELBO of ``frame`` against Pyro's ``ref`` (mean, se), 5 combined se.
    ppl_vae's se is at least Pyro's scaled to its particles (same distribution, so a wrong
    se of ppl_vae cannot make the band narrower)."""
    elbo, se = joint(frame)
    mean, ref_se = ref
    se = max(se if se == se else 0.0, ref_se)
    assert truth.agree(elbo, mean, se, ref_se), (
        f"{pair.describe()}: {what}: ppl_vae {elbo:.3f} ± {se:.3f}, Pyro's {kind} "
        f"{mean:.3f} ± {ref_se:.3f} (difference {elbo - mean:+.3f})"
    )


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


@seeds()
def test_truth_pyro_estimators_agree_on_the_same_elbo(seed):
    # the truths are one ELBO: Trace_ELBO, the mean of vectorized_importance_weights, log
    # weights summed by hand over every sample site of both traces, TraceMeanField_ELBO where
    # "analytic" applies, TraceEnum_ELBO where the guide enumerates (the same expectation)
    pair = ready(seed)
    kind = "enum" if pair.estimator == "enum" else "sampled"
    ref = truth.elbo(pair, kind, PARTICLES // 2, chunks=10)
    if pair.applies("weights"):
        for name, w in (("vectorized_importance_weights", truth.log_weights(pair, PARTICLES)),
                        ("hand", truth.hand_log_weights(pair, PARTICLES))):
            se = w.std(ddof=1) / math.sqrt(len(w))
            assert truth.agree(w.mean(), ref[0], se, ref[1]), (pair.describe(), name,
                                                               w.mean(), se, ref)
    for other in ("analytic", "enum"):
        if pair.applies(other) and other != kind:
            value = truth.elbo(pair, other, PARTICLES // 2, chunks=10)
            assert truth.agree(*value[:1], ref[0], value[1], ref[1]), (pair.describe(), other,
                                                                       value, ref)


@seeds()
def test_truth_pyro_svi_steps_on_the_minibatches(seed):
    # the data is valid for the pair on every minibatch ppl_vae's fit may draw: Pyro's SVI
    # steps on each contiguous batch of fit_batch_size rows
    pair = ready(seed)
    size = pair.fit_batch_size
    elbo = (TraceEnum_ELBO if pair.estimator == "enum" else Trace_ELBO)(
        max_plate_nesting=pair.max_plate_nesting)
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*TraceEnum_ELBO", UserWarning)
        for start in range(0, min(pair.num_rows - size + 1, 2 * size), size):
            batch = take_rows(pair.data, torch.arange(start, start + size))
            args, kwargs = call_args(batch, pair.model_kwargs)
            assert math.isfinite(svi.step(*args, **kwargs))


# =============================================================================================
# ppl_vae against the truths
# =============================================================================================


TRUTHS = {"sampled": "Trace_ELBO", "analytic": "TraceMeanField_ELBO", "enum": "TraceEnum_ELBO"}
JOINT = [(kind, s) for kind in TRUTHS for s, p in PAIRS.items() if p.applies(kind)]


@pytest.mark.parametrize(("kind", "seed"), JOINT, ids=[f"{k}-{_id(s)}" for k, s in JOINT])
def test_joint_elbo_is_pyros(pv, kind, seed):
    # evaluate(estimator=kind) against Pyro's estimator of that kind at the same parameters
    pair = ready(seed)
    ref = truth.elbo(pair, kind, PARTICLES, chunks=10)
    frame = evaluate(pv, pair, kind)
    compare_joint(pair, frame, TRUTHS[kind], ref, f"joint ELBO, estimator={kind!r}")
    if pair.applies("rows"):  # the rows are the whole of the joint numbers
        assert joint(frame)[0] == pytest.approx(frame["elbo"].sum(), rel=1e-6, abs=1e-4)


def ppl_log_weights(pv, pair, num_samples: int, batch_size: int = 256, seed: int = 12):
    """ppl_vae's log weights of the whole data set per particle: the rows' local weights
    summed (rows independent), or ``log_weights(...).joint`` with global latents."""
    if pair.global_latents:
        how = dict(batch_size=batch_size, particle_batch=num_samples, seed=seed,
                   model_kwargs=pair.model_kwargs)
        weights = pv.evaluation.log_weights(pair.model, pair.guide, pair.data, num_samples, how)
        return weights.joint.double().numpy()
    local = pv.importance_log_weights(pair.model, pair.guide, pair.data, num_samples,
                                      batch_size=batch_size, particle_batch=num_samples,
                                      seed=seed, model_kwargs=pair.model_kwargs)
    assert tuple(local.shape) == (num_samples, pair.num_rows), pair.describe()
    return local.sum(1).double().numpy()


def compare_weights(pair, ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Same distribution: the means (the ELBO) within 5 combined se, and the K-sample
    log-mean-exp (log p(X)) within 5 sds of the bootstrap of Pyro's pooled weights."""
    se = ours.std(ddof=1) / math.sqrt(len(ours))
    ref_se = ref.std(ddof=1) / math.sqrt(len(ref))
    assert truth.agree(ours.mean(), ref.mean(), max(se, ref_se), ref_se), (
        f"{pair.describe()}: {what}: mean log weight ppl_vae {ours.mean():.3f} ± {se:.3f}, "
        f"Pyro's vectorized_importance_weights {ref.mean():.3f} ± {ref_se:.3f}"
    )
    lme = truth.log_mean_exp(ours)
    mean, sd = truth.iwae(ref, len(ours))
    assert truth.agree(lme, mean, sd, atol=0.05), (
        f"{pair.describe()}: {what}: log-mean-exp of {len(ours)} weights ppl_vae {lme:.3f}, "
        f"Pyro's {mean:.3f} (sd {sd:.3f})"
    )


@seeds("weights")
def test_importance_weights_are_pyros(pv, seed):
    pair = ready(seed)
    ref = truth.log_weights(pair, 4 * PARTICLES)
    compare_weights(pair, ppl_log_weights(pv, pair, PARTICLES), ref, "importance log weights")


@seeds("rows")
def test_row_elbo_is_pyros_on_that_row(pv, seed):
    pair = ready(seed)
    kind = "enum" if pair.estimator == "enum" else "sampled"
    frame = evaluate(pv, pair, pair.estimator)
    assert len(frame) == pair.num_rows
    means, ses = truth.row_elbos(pair, kind, PARTICLES)
    ours, our_se = frame["elbo"].to_numpy(), frame["elbo_se"].to_numpy()
    bad = [
        f"row {n}: ppl_vae {ours[n]:.3f} ± {our_se[n]:.3f}, Pyro {means[n]:.3f} ± {ses[n]:.3f}"
        for n in range(pair.num_rows)
        if not truth.agree(ours[n], means[n], max(our_se[n], ses[n]), ses[n])
    ]
    assert not bad, f"{pair.describe()}: per-row ELBO against Pyro on that row alone: {bad}"
    np.testing.assert_allclose(ours, frame["reconstruction"] - frame["kl"], rtol=0, atol=1e-6)
    columns = [c for c in frame.columns if c.startswith("kl[")]
    assert columns, pair.describe()
    np.testing.assert_allclose(frame["kl"], frame[columns].sum(1), rtol=1e-6, atol=1e-4)


@seeds("batch_size")
def test_numbers_do_not_depend_on_the_evaluation_batch_size(pv, seed):
    pair = ready(seed)
    kind = "enum" if pair.estimator == "enum" else "sampled"
    ref = truth.elbo(pair, kind, PARTICLES, chunks=10)
    small = evaluate(pv, pair, pair.estimator, batch_size=3, seed=13)
    assert len(small) == pair.num_rows
    compare_joint(pair, small, kind, ref, "joint ELBO at batch_size=3")
    if pair.applies("rows"):
        whole = evaluate(pv, pair, pair.estimator, batch_size=pair.num_rows)
        a, b = whole["elbo"].to_numpy(), small["elbo"].to_numpy()
        se = np.hypot(whole["elbo_se"].to_numpy(), small["elbo_se"].to_numpy())
        bad = [n for n in range(len(a)) if not truth.agree(a[n], b[n], se[n])]
        assert not bad, (pair.describe(), [(n, a[n], b[n], se[n]) for n in bad])
    if pair.applies("weights"):
        ref_w = truth.log_weights(pair, 2 * PARTICLES)
        ours = ppl_log_weights(pv, pair, PARTICLES, batch_size=3)
        compare_weights(pair, ours, ref_w, "importance log weights at batch_size=3")


@seeds()
def test_diagnostics_and_inference_data_export(pv, seed):
    pair = ready(seed)
    table = pv.vi_diagnostics(pair.model, pair.guide, pair.data, 100, seed=14,
                              model_kwargs=pair.model_kwargs)
    assert len(table) == pair.num_rows and np.isfinite(table["log_likelihood"]).all()
    draws = 10
    idata = pv.to_inference_data(pair.model, pair.guide, pair.data, draws, seed=15,
                                 model_kwargs=pair.model_kwargs)
    groups = {g: set(idata[g].data_vars) for g in ("posterior", "observed_data",
                                                   "log_likelihood", "posterior_predictive")}
    problems = []
    for group in ("observed_data", "log_likelihood", "posterior_predictive"):
        factors = groups[group] & set(pair.factors)
        if factors:
            problems.append(f"factor(s) {sorted(factors)} in {group}")
    missing = set(pair.deterministic) - groups["posterior"]
    if missing:
        problems.append(f"deterministic site(s) {sorted(missing)} not in posterior "
                        f"{sorted(groups['posterior'])}")
    # a latent's draws have the site's shape in one run of the pair on all rows: no stray dims
    args, kwargs = call_args(pair.data, pair.model_kwargs)
    with torch.no_grad():
        guide_trace = pyro.poutine.trace(pair.guide).get_trace(*args, **kwargs)
    for name in groups["posterior"] & set(guide_trace.nodes):
        want = (1, draws) + tuple(guide_trace.nodes[name]["value"].shape)
        if tuple(idata["posterior"][name].shape) != want:
            problems.append(f"posterior {name!r} has shape {tuple(idata['posterior'][name].shape)}"
                            f", the site {want[2:]} (after chain, draw)")
    assert not problems, f"{pair.describe()}: " + "; ".join(problems)


@seeds()
def test_fit_takes_steps_on_minibatches(pv, seed):
    pair = ready(seed)
    result = pv.fit(pair.model, pair.guide, pair.data, num_steps=3,
                    batch_size=pair.fit_batch_size, estimator=pair.estimator, lr=1e-3, seed=0,
                    model_kwargs=pair.model_kwargs)
    assert len(result.history) == 3 and np.isfinite(result.history["elbo"]).all()
