"""Pyro's own numbers for a pair at the current parameters, each with its Monte Carlo error.

- :func:`elbo`: ``-Trace_ELBO(...).loss`` (``"sampled"``), ``-TraceMeanField_ELBO(...).loss``
  (``"analytic"``) or ``-TraceEnum_ELBO(...).loss`` (``"enum"``) of the whole data set, as the
  mean of independent vectorized calls; their spread gives the standard error.
- :func:`log_weights`: the importance log weights log p(X, z) − log q(z) of the whole data set
  from ``pyro.infer.importance.vectorized_importance_weights`` (one vectorized pass).
- :func:`row_elbos`: row n's ELBO as Pyro computes it on the data of that row alone (per-row
  data through the same pair), for pairs whose rows are independent.
- :func:`hand_log_weights`: the same log weights summed by hand from ``poutine.trace`` (every
  sample site of both traces, with its scale and mask), to cross-check the others;
- :func:`assert_one_elbo`: the truths agree with each other where they target the same ELBO;
  :func:`svi_steps`: Pyro's SVI steps on the pair (on minibatches: the data is valid there).

Every function here uses Pyro only, so the truths hold whatever ppl_vae's state.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from tests.conformance import call_args, mean_se, num_rows, take_rows

from . import CorpusPair

ESTIMATORS = {"sampled": Trace_ELBO, "analytic": TraceMeanField_ELBO, "enum": TraceEnum_ELBO}
# 5 combined standard errors: a two-sided normal tail of 5.7e-7 per comparison, so a few
# thousand comparisons over the corpus and its seeds fail by chance with probability < 1e-3
SIGMAS = 5.0


def elbo(pair: CorpusPair, kind: str, num_particles: int = 2000, chunks: int = 20,
         data=None) -> tuple[float, float]:
    """Pyro's ELBO estimator ``kind`` on ``data`` (default the pair's): mean and standard error
    of ``chunks`` calls of ``num_particles // chunks`` particles each (vectorized where the
    pair broadcasts, else drawn one by one)."""
    args, kwargs = call_args(pair.data if data is None else data, pair.model_kwargs)
    estimator = ESTIMATORS[kind](num_particles=max(1, num_particles // chunks),
                                 vectorize_particles=pair.broadcasts,
                                 max_plate_nesting=pair.max_plate_nesting)
    with torch.no_grad():
        values = [-float(estimator.loss(pair.model, pair.guide, *args, **kwargs))
                  for _ in range(chunks)]
    return mean_se(values)


def log_weights(pair: CorpusPair, num_samples: int, data=None) -> np.ndarray:
    """``num_samples`` log weights of ``data`` (default the pair's whole data set), float64."""
    from pyro.infer.importance import vectorized_importance_weights

    args, kwargs = call_args(pair.data if data is None else data, pair.model_kwargs)
    with torch.no_grad():
        log_w, _, _ = vectorized_importance_weights(
            pair.model, pair.guide, *args, num_samples=num_samples,
            max_plate_nesting=pair.max_plate_nesting, normalized=False, **kwargs,
        )
    return log_w.detach().double().numpy()


def row_elbos(pair: CorpusPair, kind: str, num_particles: int = 1000
              ) -> tuple[np.ndarray, np.ndarray]:
    """Row n's ELBO (mean, standard error per row) from Pyro on the data of row n alone.

    ``"sampled"``: the mean of ``vectorized_importance_weights`` (Trace_ELBO's integrand),
    its se from their spread. ``"enum"``: ``TraceEnum_ELBO`` in 10 calls."""
    means, ses = [], []
    for n in range(num_rows(pair.data)):
        one = take_rows(pair.data, torch.tensor([n]))
        if kind == "sampled":
            w = log_weights(pair, num_particles, data=one)
            means.append(w.mean())
            ses.append(w.std(ddof=1) / math.sqrt(len(w)))
        else:
            mean, se = elbo(pair, kind, num_particles, chunks=10, data=one)
            means.append(mean)
            ses.append(se)
    return np.array(means), np.array(ses)


def hand_log_weights(pair: CorpusPair, num_samples: int) -> np.ndarray:
    """log p(X, z) − log q(z) per particle, summed by hand: the guide and the model replayed
    on it, traced under a vectorized particle plate; every sample site's ``log_prob`` (scale
    and mask applied, Pyro's factors and the guide's observed sites included) summed over
    every dim but the particle dim."""
    args, kwargs = call_args(pair.data, pair.model_kwargs)
    dim = -(pair.max_plate_nesting + 1)

    def vectorized(fn):
        def wrapped(*a, **k):
            with pyro.plate("hand_particles", num_samples, dim=dim):
                return fn(*a, **k)

        return wrapped

    with torch.no_grad():
        guide_trace = poutine.trace(vectorized(pair.guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(vectorized(pair.model), trace=guide_trace)
        ).get_trace(*args, **kwargs)
        total = torch.zeros(num_samples, dtype=torch.float64)
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            trace.compute_log_prob()
            for site in trace.nodes.values():
                if site["type"] != "sample" or "log_prob" not in site:
                    continue
                total += sign * per_particle(site["log_prob"], num_samples, dim)
    return total.numpy()


def per_particle(log_prob, num_samples: int, dim: int) -> torch.Tensor:
    """A site's log_prob summed over all dims but the particle dim ``dim``: ``(num_samples,)``
    (a log_prob without that dim is the same for every particle)."""
    value = torch.as_tensor(log_prob, dtype=torch.float64)
    if value.dim() < -dim:
        return value.sum().expand(num_samples)
    axis = value.dim() + dim
    others = [a for a in range(value.dim()) if a != axis]
    summed = value.sum(others) if others else value
    return summed.expand(num_samples)


def iwae(log_w: np.ndarray, num_particles: int, draws: int = 400, seed: int = 0
         ) -> tuple[float, float]:
    """Mean and sd of the K-sample estimator log (1/K) Σ_k w_k of log p(X), K =
    ``num_particles``, by resampling ``log_w`` (Pyro's pooled weights)."""
    rng = np.random.default_rng(seed)
    picks = log_w[rng.integers(0, len(log_w), size=(draws, num_particles))]
    values = np.logaddexp.reduce(picks, axis=1) - math.log(num_particles)
    return float(values.mean()), float(values.std(ddof=1))


def log_mean_exp(log_w) -> float:
    log_w = np.asarray(log_w, dtype=np.float64)
    return float(np.logaddexp.reduce(log_w) - math.log(len(log_w)))


def agree(value: float, reference: float, *ses: float, atol: float = 1e-3) -> bool:
    """|value − reference| ≤ SIGMAS · sqrt(Σ se²) + atol (a NaN se counts as 0)."""
    se = math.sqrt(sum(s * s for s in ses if s == s))
    return abs(value - reference) <= SIGMAS * se + atol


def assert_one_elbo(pair: CorpusPair, num_particles: int = 500) -> None:
    """The truths are one ELBO: Trace_ELBO, the mean of vectorized_importance_weights, log
    weights summed by hand over every sample site of both traces, TraceMeanField_ELBO where
    "analytic" applies, TraceEnum_ELBO where the guide enumerates (the same expectation)."""
    kind = "enum" if pair.estimator == "enum" else "sampled"
    ref = elbo(pair, kind, num_particles, chunks=10)
    if pair.applies("weights"):
        for name, w in (("vectorized_importance_weights", log_weights(pair, num_particles)),
                        ("hand", hand_log_weights(pair, num_particles))):
            se = w.std(ddof=1) / math.sqrt(len(w))
            assert agree(w.mean(), ref[0], se, ref[1]), (pair.describe(), name, w.mean(), se,
                                                         ref)
    for other in ("analytic", "enum"):
        if pair.applies(other) and other != kind:
            value = elbo(pair, other, num_particles, chunks=10)
            assert agree(value[0], ref[0], value[1], ref[1]), (pair.describe(), other, value,
                                                               ref)


def svi_steps(pair: CorpusPair, batch_size: int | None = None, max_batches: int = 2,
              lr: float = 1e-3) -> None:
    """Pyro's SVI (Trace_ELBO, or TraceEnum_ELBO for a pair trained with ``"enum"``) steps on
    contiguous minibatches of ``batch_size`` rows (default all rows), at most ``max_batches``
    of them; each loss must be finite."""
    size = batch_size or num_rows(pair.data)
    loss = (TraceEnum_ELBO if pair.estimator == "enum" else Trace_ELBO)(
        max_plate_nesting=pair.max_plate_nesting)
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": lr}), loss)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*TraceEnum_ELBO", UserWarning)
        starts = range(0, num_rows(pair.data) - size + 1, size)
        for start in list(starts)[:max_batches]:
            batch = take_rows(pair.data, torch.arange(start, start + size))
            args, kwargs = call_args(batch, pair.model_kwargs)
            assert math.isfinite(svi.step(*args, **kwargs)), (pair.describe(), start)
