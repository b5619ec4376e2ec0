"""A generated corpus of Pyro model/guide pairs, each checked against Pyro's own estimators.

:func:`generate` composes Pyro idioms into a valid pair from a seed (:mod:`.generator`);
:mod:`.truth` computes Pyro's numbers at the same parameters (``Trace_ELBO``,
``TraceMeanField_ELBO``, ``TraceEnum_ELBO``, ``vectorized_importance_weights``), each with its
Monte Carlo standard error. ``tests/test_corpus.py`` checks ppl_vae against them pair by pair.

A :class:`CorpusPair` records the idioms it uses (so a failing test names them) and, per check,
whether it applies and why not where it does not. Nothing here imports ppl_vae, so the truths
can be checked while the library is being rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch

# the checks of tests/test_corpus.py; a pair's ``skips`` maps those that do not apply to why
CHECKS = (
    "sampled",  # evaluate(estimator="sampled") against Trace_ELBO
    "analytic",  # evaluate(estimator="analytic") against TraceMeanField_ELBO
    "enum",  # evaluate(estimator="enum") against TraceEnum_ELBO
    "weights",  # importance log weights against vectorized_importance_weights
    "rows",  # row n's ELBO against Pyro's on that row alone
    "batch_size",  # the same numbers at evaluation batch size N and a small one
    "export",  # vi_diagnostics and to_inference_data run; factors, deterministic sites, shapes
    "fit",  # fit takes steps on minibatches
)


@dataclass
class CorpusPair:
    """One pair checked against Pyro's truths: generated here, or written from one of Pyro's
    examples (``tests/conformance``, whose ``source`` names the example's file).

    Attributes:
        name: ``c{seed:02d}`` for a generated pair.
        seed: the seed it was generated from.
        idioms: the Pyro idioms it uses, e.g. ``("guide:delta+factor", "data:int64")``.
        model, guide: the Pyro pair.
        data: ppl_vae's ``data`` (a tensor, a tuple or a dict of per-row arrays).
        model_kwargs: constants passed with every call (or None).
        max_plate_nesting: the model's plate nesting (Pyro's vectorized estimators need it).
        global_latents: whether q has sites outside the data plate (its rows are coupled).
        init: ``f()`` that puts the pair's parameters in the param store at their fixed
            starting values (every call gives the same values); without it,
            :func:`initialize` runs the pair once under a fixed seed.
        skips: check name → why it does not apply to this pair.
        estimator: the estimator that trains this pair (``"enum"`` where the model sums a
            site out).
        factors, deterministic: the names of the model's ``pyro.factor`` and
            ``pyro.deterministic`` sites (what the ArviZ export must not show as data, and
            must show in ``posterior``).
        fit_batch_size: rows per training step (the whole data where a guide has one
            parameter per row of the plate it first saw).
        broadcasts: whether the pair runs under a vectorized particle plate (Pyro's truths
            and ppl_vae then draw particles vectorized; else one at a time).
        extras: anything else a pair provides (its modules, helpers).
    """

    name: str
    idioms: tuple[str, ...]
    model: Callable
    guide: Callable
    data: Any
    model_kwargs: dict | None
    max_plate_nesting: int
    global_latents: bool
    init: Callable[[], None] | None = None
    seed: int = 0
    source: str = ""
    skips: dict[str, str] = field(default_factory=dict)
    estimator: str = "sampled"
    factors: tuple[str, ...] = ()
    deterministic: tuple[str, ...] = ()
    fit_batch_size: int | None = None
    broadcasts: bool = True
    extras: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        from tests.conformance import num_rows

        return num_rows(self.data)

    def applies(self, check: str) -> bool:
        return check not in self.skips

    def describe(self) -> str:
        source = f" ({self.source})" if self.source else ""
        return f"{self.name}{source} [{', '.join(self.idioms)}]"

    def call_args(self) -> tuple[tuple, dict]:
        from tests.conformance import call_args

        return call_args(self.data, self.model_kwargs)


def initialize(pair: CorpusPair) -> None:
    """Empty the param store and put ``pair``'s parameters at their starting values: its
    ``init``, or the guide and the model run once on all rows under its seed (parameters
    drawn at random on first use are then the same every time)."""
    from pyro import poutine

    pyro.clear_param_store()
    if pair.init is not None:
        pair.init()
        return
    args, kwargs = pair.call_args()
    with torch.random.fork_rng():
        pyro.set_rng_seed(pair.seed)
        guide_trace = poutine.trace(pair.guide).get_trace(*args, **kwargs)
        poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args, **kwargs)


def generate(seed: int) -> CorpusPair:
    """The pair of ``seed`` (deterministic: the same seed gives the same pair and data)."""
    from .generator import build, plan_for

    return build(plan_for(seed))


NUM_PAIRS = 32
SEEDS = tuple(range(NUM_PAIRS))


def dtype_of(data) -> torch.dtype:
    first = next(iter(data.values())) if isinstance(data, dict) else (
        data[0] if isinstance(data, tuple) else data
    )
    return first.dtype
