"""The checks of one pair against Pyro's truths (:mod:`.truth`) at the current parameters.

Each ``check_*`` takes ppl_vae (the module, imported by the test) and a :class:`CorpusPair`
whose parameters are in the param store, and asserts, naming the pair and its idioms:

- :func:`check_joint`: ``evaluate(estimator=kind).attrs["joint"]["elbo"]`` against Pyro's
  estimator of that kind (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceEnum_ELBO``);
- :func:`check_weights`: the importance log weights of the whole data set against
  ``vectorized_importance_weights`` (their mean and their log-mean-exp);
- :func:`check_rows`: row n's ELBO against Pyro's on the data of row n alone, and the identities
  ``elbo == reconstruction − kl``, ``kl == Σ kl[site]``;
- :func:`check_batch_size`: the numbers at small evaluation batch sizes (3, and one whose last
  batch has one row) against Pyro's and against ppl_vae's at batch size N;
- :func:`check_export`: ``vi_diagnostics`` and ``to_inference_data`` run; factors are not data
  or log-likelihood, deterministic sites are in ``posterior``, latents have their sites' shapes.

Monte Carlo bands are ``truth.SIGMAS`` (5) combined standard errors; ppl_vae's own se is
taken as at least Pyro's (the same distribution), so a wrong se cannot narrow a band.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings

import numpy as np
import pyro
import pytest
import torch

from tests.conformance import call_args

from . import CorpusPair, truth

PARTICLES = 1000  # ppl_vae's particles per evaluation, and Pyro's per truth
TRUTHS = {"sampled": "Trace_ELBO", "analytic": "TraceMeanField_ELBO", "enum": "TraceEnum_ELBO"}


def kind_of(pair: CorpusPair) -> str:
    """The Pyro estimator that is the truth of the pair's training estimator."""
    return "enum" if pair.estimator == "enum" else "sampled"


@contextlib.contextmanager
def particles(pv, pair: CorpusPair):
    """A block of ppl_vae calls: a pair that broadcasts over particles in Pyro must do so in
    ppl_vae (its ``ParticleLoopWarning`` is an error), one that does not may loop. Pyro's hint
    that Trace_ELBO samples the sites marked for enumeration is silenced."""
    with warnings.catch_warnings():
        action = "error" if pair.broadcasts else "ignore"
        warnings.filterwarnings(action, category=pv.ParticleLoopWarning)
        warnings.filterwarnings("ignore", ".*TraceEnum_ELBO", UserWarning)
        yield


def evaluate(pv, pair: CorpusPair, estimator: str, num_particles: int = PARTICLES, **options):
    options.setdefault("seed", 11)
    with particles(pv, pair):
        return pv.evaluate(pair.model, pair.guide, pair.data, num_particles,
                           estimator=estimator, model_kwargs=pair.model_kwargs, **options)


def joint(frame) -> tuple[float, float]:
    return float(frame.attrs["joint"]["elbo"]), float(frame.attrs["joint"]["elbo_se"])


def compare_joint(pair: CorpusPair, frame, kind: str, ref: tuple[float, float], what: str
                  ) -> None:
    """ppl_vae's joint ELBO of ``frame`` against ``ref`` (mean, se)."""
    elbo, se = joint(frame)
    mean, ref_se = ref
    se = max(se if se == se else 0.0, ref_se)
    assert truth.agree(elbo, mean, se, ref_se), (
        f"{pair.describe()}: {what}: ppl_vae {elbo:.3f} ± {se:.3f}, Pyro's {kind} "
        f"{mean:.3f} ± {ref_se:.3f} (difference {elbo - mean:+.3f})"
    )


def check_joint(pv, pair: CorpusPair, kind: str, num_particles: int = PARTICLES) -> None:
    ref = truth.elbo(pair, kind, num_particles, chunks=10)
    frame = evaluate(pv, pair, kind, num_particles)
    compare_joint(pair, frame, TRUTHS[kind], ref, f"joint ELBO, estimator={kind!r}")
    if pair.applies("rows"):  # the rows are the whole of the joint numbers
        assert joint(frame)[0] == pytest.approx(frame["elbo"].sum(), rel=1e-6, abs=1e-4)


def ppl_log_weights(pv, pair: CorpusPair, num_samples: int, batch_size: int = 256,
                    seed: int = 12) -> np.ndarray:
    """ppl_vae's log weights of the whole data set per particle: the rows' local weights
    summed (rows independent), or ``log_weights(...).joint`` with global latents."""
    with particles(pv, pair):
        if pair.global_latents:
            how = dict(batch_size=batch_size, particle_batch=num_samples, seed=seed,
                       model_kwargs=pair.model_kwargs)
            evaluation = importlib.import_module("ppl_vae.evaluation.evaluation")
            weights = evaluation.log_weights(pair.model, pair.guide, pair.data, num_samples, how)
            return weights.joint.double().numpy()
        local = pv.importance_log_weights(pair.model, pair.guide, pair.data, num_samples,
                                          batch_size=batch_size, particle_batch=num_samples,
                                          seed=seed, model_kwargs=pair.model_kwargs)
    assert tuple(local.shape) == (num_samples, pair.num_rows), pair.describe()
    return local.sum(1).double().numpy()


def compare_weights(pair: CorpusPair, ours: np.ndarray, ref: np.ndarray, what: str) -> None:
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


def check_weights(pv, pair: CorpusPair, num_samples: int = PARTICLES) -> None:
    ref = truth.log_weights(pair, 4 * num_samples)
    compare_weights(pair, ppl_log_weights(pv, pair, num_samples), ref, "importance log weights")


def check_rows(pv, pair: CorpusPair, num_particles: int = PARTICLES) -> None:
    frame = evaluate(pv, pair, pair.estimator, num_particles)
    assert len(frame) == pair.num_rows
    means, ses = truth.row_elbos(pair, kind_of(pair), num_particles)
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


def small_batches(rows: int) -> list[int]:
    """Evaluation batch sizes to try: 3 (the first batch is not typical: the generator puts
    the longest sequence last), and one that leaves a single row for the last batch."""
    one_left = next((b for b in range(3, rows) if rows % b == 1), 3)
    return sorted({3, one_left})


def check_batch_size(pv, pair: CorpusPair, num_particles: int = PARTICLES,
                     batch_sizes: list[int] | None = None) -> None:
    """The numbers at each of ``batch_sizes`` (default :func:`small_batches`) against Pyro's
    and, per row, against ppl_vae's at batch size N."""
    kind = kind_of(pair)
    ref = truth.elbo(pair, kind, num_particles // 2, chunks=10)
    whole = None
    if pair.applies("rows"):
        whole = evaluate(pv, pair, pair.estimator, num_particles, batch_size=pair.num_rows)
    for batch_size in batch_sizes or small_batches(pair.num_rows):
        small = evaluate(pv, pair, pair.estimator, num_particles, batch_size=batch_size,
                         seed=13)
        assert len(small) == pair.num_rows
        compare_joint(pair, small, TRUTHS[kind], ref, f"joint ELBO at batch_size={batch_size}")
        if whole is not None:
            a, b = whole["elbo"].to_numpy(), small["elbo"].to_numpy()
            se = np.hypot(whole["elbo_se"].to_numpy(), small["elbo_se"].to_numpy())
            bad = [f"row {n}: {a[n]:.3f} and {b[n]:.3f} ± {se[n]:.3f}" for n in range(len(a))
                   if not truth.agree(a[n], b[n], se[n])]
            assert not bad, (f"{pair.describe()}: row ELBOs at batch_size=N and "
                             f"batch_size={batch_size}: {bad}")
    if pair.applies("weights"):
        ref_w = truth.log_weights(pair, num_particles)
        batch_size = min(batch_sizes or small_batches(pair.num_rows))
        ours = ppl_log_weights(pv, pair, num_particles // 2, batch_size=batch_size)
        compare_weights(pair, ours, ref_w, f"importance log weights at batch_size={batch_size}")


def check_export(pv, pair: CorpusPair, num_samples: int = 50, draws: int = 10) -> None:
    with particles(pv, pair):
        table = pv.vi_diagnostics(pair.model, pair.guide, pair.data, num_samples, seed=14,
                                  model_kwargs=pair.model_kwargs)
        idata = pv.to_inference_data(pair.model, pair.guide, pair.data, draws, seed=15,
                                     model_kwargs=pair.model_kwargs)
    assert len(table) == pair.num_rows and np.isfinite(table["log_likelihood"]).all()
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


def check_truths(pair: CorpusPair, num_particles: int = 500) -> None:
    """Pyro only: the truths are one ELBO (:func:`truth.assert_one_elbo`), and the weight
    comparison passes on two independent sets of Pyro's own weights (its bands are wide
    enough for these pairs' tails)."""
    truth.assert_one_elbo(pair, num_particles)
    if pair.applies("weights"):
        compare_weights(pair, truth.log_weights(pair, num_particles),
                        truth.log_weights(pair, 4 * num_particles),
                        "Pyro's weights against Pyro's")


def run(pv, pair: CorpusPair, check: str) -> None:
    """The check named ``check`` (``tests.corpus.CHECKS``), with the particles and batch sizes
    the pair asks for (``extras["particles"]``, ``extras["batch_sizes"]``: a pair that does
    not broadcast draws its particles one by one)."""
    particles = pair.extras.get("particles", PARTICLES)
    if check in TRUTHS:
        check_joint(pv, pair, check, particles)
    elif check == "weights":
        check_weights(pv, pair, particles)
    elif check == "rows":
        check_rows(pv, pair, particles)
    elif check == "batch_size":
        check_batch_size(pv, pair, particles, pair.extras.get("batch_sizes"))
    elif check == "export":
        check_export(pv, pair)
    else:
        check_fit(pv, pair)


def check_fit(pv, pair: CorpusPair, num_steps: int = 3, **options) -> None:
    """``fit`` takes ``num_steps`` steps on minibatches of ``pair.fit_batch_size`` rows."""
    options = dict(batch_size=pair.fit_batch_size, estimator=pair.estimator, lr=1e-3,
                   seed=0) | options
    with particles(pv, pair):
        result = pv.fit(pair.model, pair.guide, pair.data, num_steps=num_steps,
                        model_kwargs=pair.model_kwargs, **options)
    assert len(result.history) == num_steps and np.isfinite(result.history["elbo"]).all()
