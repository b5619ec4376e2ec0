r"""Vectorized particles against naive per-sample loops: ``log_likelihood`` and gradient draws.

- ``log_likelihood``: the IWAE bound with K = 1000 importance samples per datapoint over the
  digits test split (360 rows), vectorized ``particle_batch`` samples at a time, against a loop
  that traces the guide and the replayed model once per sample (each pass over all rows).
- gradient draws (what ``compare_estimators`` measures gradient variance on): R per-draw
  gradients of the minibatch loss for both estimators, vectorized in chunks with
  ``is_grads_batched``, against a loop of R ``loss_and_grads`` calls of Pyro's
  ``Trace_ELBO`` and ``TraceMeanField_ELBO``, one particle each.

Both contenders compute the same quantities (tests/evaluation/test_vectorized_equivalence.py
checks that they agree on the same draws); repeats are interleaved.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import torch
from pyro import poutine

import ppl_vae
from ppl_vae.evaluation.variance import gradient_draws
from ppl_vae.pair.traces import is_latent, is_observed

from .steps import CONFIGS, data_for, fresh_pair

ESTIMATORS = ("sampled", "analytic")


def naive_log_likelihood(model, guide, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log (1/K) Σ_k p(x, z_k)/q(z_k|x) per row, one trace of guide and model per sample."""
    log_w = []
    with torch.no_grad():
        for _ in range(num_samples):
            guide_trace = poutine.trace(guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
            log_w.append(row_log_weight(model_trace, guide_trace))
    return torch.logsumexp(torch.stack(log_w), 0) - math.log(num_samples)


def row_log_weight(model_trace, guide_trace) -> torch.Tensor:
    """log p(x, z) − log q(z|x) per row, from the sites' own ``log_prob`` (no reductions)."""
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    model_sites = [s for s in model_trace.nodes.values() if is_latent(s) or is_observed(s)]
    guide_sites = [s for s in guide_trace.nodes.values() if is_latent(s)]
    return sum(s["log_prob"] for s in model_sites) - sum(s["log_prob"] for s in guide_sites)


def naive_gradient_draws(
    model, guide, x: torch.Tensor, estimator: str, num_draws: int
) -> dict[str, torch.Tensor]:
    """Per parameter name, ``num_draws`` gradients of the one-particle minibatch loss, each by
    one ``loss_and_grads`` of Pyro's own ELBO; shape ``(num_draws, *param.shape)``."""
    elbo = ppl_vae.ESTIMATORS[estimator].elbo()
    draws: dict[str, list[torch.Tensor]] = {}
    for _ in range(num_draws):
        with poutine.trace(param_only=True) as capture:
            elbo.loss_and_grads(model, guide, x)
        for name, site in capture.trace.nodes.items():
            param = site["value"].unconstrained()
            draws.setdefault(name, []).append(param.grad.clone())
            param.grad = None
    return {name: torch.stack(grads) for name, grads in draws.items()}


def measure(repeats: int, num_samples: int = 1000, num_draws: int = 100) -> pd.DataFrame:
    """Seconds per contender and repeat, interleaved (order reversed every other repeat).

    Every timed call starts from the same freshly initialized pair (not timed).
    """
    test = ppl_vae.load_data("digits", split="test", binarize=True)
    jobs = {
        ("log_likelihood", VECTORIZED): lambda pair: ppl_vae.log_likelihood(
            pair.model, pair.guide, test, num_samples, seed=0
        ),
        ("log_likelihood", NAIVE): lambda pair: naive_log_likelihood(
            pair.model, pair.guide, test, num_samples
        ),
    }
    configs = {"log_likelihood": CONFIGS[0]}
    sizes = {"log_likelihood": f"digits test split ({test.shape[0]} rows), K={num_samples}"}
    for config in CONFIGS:
        what = f"gradient draws, {config.name}"
        configs[what] = config
        sizes[what] = f"R={num_draws} x {len(ESTIMATORS)} estimators, batch {config.batch_size}"
        jobs |= _gradient_jobs(what, data_for(config)[: config.batch_size], num_draws)

    def timed(what: str, how: str) -> float:
        pair = fresh_pair(configs[what])
        started = time.perf_counter()
        jobs[what, how](pair)
        return time.perf_counter() - started

    for what, how in jobs:  # warm-up (first vmap, allocator), not recorded
        timed(what, how)
    rows = []
    for repeat in range(repeats):
        order = list(jobs) if repeat % 2 == 0 else list(reversed(jobs))
        rows += [(what, sizes[what], how, repeat, timed(what, how)) for what, how in order]
    return pd.DataFrame(rows, columns=["measurement", "size", "contender", "repeat", "seconds"])


VECTORIZED = "vectorized"
NAIVE = "naive loop"


def _gradient_jobs(what: str, x: torch.Tensor, num_draws: int) -> dict:
    def vectorized(chunk: int):
        return lambda pair: gradient_draws(
            pair.model, pair.guide, x, ESTIMATORS, num_draws, chunk=chunk, seed=0
        )

    return {
        (what, f"{VECTORIZED} (chunk 5)"): vectorized(5),
        (what, f"{VECTORIZED} (chunk 1)"): vectorized(1),
        (what, NAIVE): lambda pair: [
            naive_gradient_draws(pair.model, pair.guide, x, e, num_draws) for e in ESTIMATORS
        ],
    }


def speedups(timings: pd.DataFrame) -> pd.DataFrame:
    """Median seconds per contender; speed-up over the naive loop (naive / it) min/median/max."""
    rows = []
    for (what, size), group in timings.groupby(["measurement", "size"], sort=False):
        wide = group.pivot(index="repeat", columns="contender", values="seconds")
        for contender in [c for c in group["contender"].unique() if c != NAIVE]:
            ratio = wide[NAIVE] / wide[contender]
            rows.append(
                {
                    "measurement": what,
                    "size": size,
                    "contender": contender,
                    "seconds": float(wide[contender].median()),
                    "naive_seconds": float(wide[NAIVE].median()),
                    "speedup_min": float(ratio.min()),
                    "speedup_median": float(ratio.median()),
                    "speedup_max": float(ratio.max()),
                }
            )
    return pd.DataFrame(rows)
