"""Checks of a pair against ``fit``'s data and settings, before the first step.

Each one turns what would fail inside a step (or train silently wrong) into a
:class:`~ppl_vae.utils.errors.PplVaeError` that names the fix.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from pyro.distributions import constraints as pyro_constraints
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from ..estimators.enumeration import enumerate_pair
from ..pair.data import check_support
from ..pair.dataset import Batch, Dataset
from ..pair.densities import check_log_densities
from ..pair.traces import (
    PAIR_FAILURES,
    PairTraces,
    is_guide_sample,
    is_invalid_parameter,
    is_observed,
    run_pair,
    trace_pair,
    with_particles,
)
from ..utils import params as param_io
from ..utils.errors import (
    DataError,
    NumericalError,
    PairError,
    PplVaeError,
    first_line,
)
from ..utils.rng import forked
from .svi import FIRST_STEP_FIX, history, overflowing_data


def probe(
    model: Callable, guide: Callable, dataset: Dataset, batch_size: int, device: torch.device
) -> PairTraces:
    """Run the pair on the first minibatch, check the data's support, move params to device.

    A support that is the same for every minibatch (``boolean``, ``nonnegative_integer``,
    ``unit_interval``, …) is checked on the whole per-row array it observes, naming row and
    column. One that depends on the minibatch (a ``Binomial``'s or ``Multinomial``'s
    ``total_count``, an ``interval`` between parameters) is checked on the first minibatch,
    against that minibatch's own distribution; the other minibatches are checked during
    their step, against theirs (:class:`SupportCheck`).
    """
    x = dataset.head(batch_size)
    try:
        layout = run_pair(model, guide, x)
    except PairError as e:
        if not is_invalid_parameter(e.__cause__):
            raise
        extreme = overflowing_data(x, torch.arange(x.rows))
        raise NumericalError(
            f"training stopped at step 1: a distribution's parameter is invalid "
            f"({first_line(e.__cause__)}) on the first minibatch{extreme}; {FIRST_STEP_FIX}",
            history=history([]),
        ) from e
    arrays = [a for _, a in dataset.arrays]
    for name, site in layout.model.nodes.items():
        if not is_observed(site):
            continue
        support = site["fn"].support
        whole = [a for a, t in zip(arrays, x.tensors, strict=True) if site["value"] is t]
        if whole and is_fixed(support):
            check_support(whole[0], name, support, torch.device("cpu"))
        else:
            value = site["value"]
            rows = value.reshape(x.rows, -1) if value.dim() and value.shape[0] == x.rows else value
            check_support(rows.reshape(rows.shape[0] if rows.dim() else 1, -1), name, support,
                          value.device)
    check_log_densities(layout, x)
    param_io.to_device(device)
    return layout if device.type == "cpu" else run_pair(model, guide, x.to(device))


class SupportCheck(Messenger):
    """Check the observed values of ``sites`` against their own distribution's support at
    every step, as Pyro's validation would (it runs on a call's first step only, unless
    ``validate_every_step``): for supports that depend on the minibatch, which the check of
    the whole data before training cannot cover."""

    def __init__(self, sites: set[str]):
        super().__init__()
        self.sites = sites

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["name"] not in self.sites or not msg["is_observed"]:
            return
        support, value = msg["fn"].support, msg["value"].detach()
        if bool(support.check(value).all()):
            return
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        ok = support.check(value).reshape(-1)  # per entry, or per event (a Multinomial's)
        entries = value.reshape(ok.numel(), -1)[int((~ok).nonzero()[0, 0])].tolist()
        shown = f"{entries[0]:g}" if len(entries) == 1 else str(entries[:8])[:-1] + (
            ", ...]" if len(entries) > 8 else "]")
        raise DataError(
            f"value {shown} observed at site {msg['name']!r} lies outside the support its "
            f"minibatch's distribution has ({support}); fix or drop those rows, or choose a "
            "likelihood whose support holds them"
        )


def batch_supports(layout: PairTraces) -> set[str]:
    """The observed sites whose support depends on the minibatch (see :func:`probe`)."""
    return {n for n, s in layout.model.nodes.items()
            if is_observed(s) and not is_fixed(s["fn"].support)}


def check_batch_supports(model: Callable, layout: PairTraces) -> Callable:
    """``model`` under :class:`SupportCheck` of its batch-dependent supports, if it has any."""
    sites = batch_supports(layout)
    return SupportCheck(sites)(model) if sites else model


_FIXED = tuple(
    {id(c): c for m in (constraints, pyro_constraints) for c in vars(m).values()
     if isinstance(c, constraints.Constraint)}.values()
)


def is_fixed(support: constraints.Constraint) -> bool:
    """Whether a support is one of the parameter-free constraints (the same for every
    minibatch), through ``independent`` wrappers."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return any(support is c for c in _FIXED)


def check_broadcasting(model: Callable, guide: Callable, x: Batch, layout: PairTraces,
                       num_particles: int, enumerates: bool) -> None:
    """Refuse ``num_particles`` > 1 for a pair whose networks do not broadcast over Pyro's
    vectorized particle dim (and its enumerated dims, when summed), before a step fails inside
    torch."""
    k, mpn = num_particles, layout.max_plate_nesting
    pair = with_particles(model, k, mpn), with_particles(guide, k, mpn)
    if enumerates:
        pair = enumerate_pair(*pair, -(mpn + 2), guide_sums=True)
    with forked(), torch.no_grad():
        try:
            _, guide_trace = trace_pair(*pair, x)
        except PAIR_FAILURES as e:
            raise PairError(
                f"num_particles={k} draws the particles vectorized, but the pair does not "
                f"broadcast over a leading particle dim ({type(e).__name__}: {first_line(e)}); "
                "train with num_particles=1 (evaluation still loops over particles), or make its "
                "networks broadcast (e.g. torch.cat on dim -1 of tensors with equal leading dims)"
            ) from e
        _check_baselines(guide_trace, k)


def _check_baselines(guide_trace, num_particles: int) -> None:
    """A site's ``nn_baseline`` or ``baseline_value`` must have the shape of the site's cost
    (``TraceGraph_ELBO`` checks it only inside a step, as a ValueError), which has at least the
    site's batch dims, the leading particle dim of vectorized particles among them: a baseline
    with fewer dims cannot match."""
    for name, site in guide_trace.nodes.items():
        options = site.get("infer", {}).get("baseline", {}) if site["type"] == "sample" else {}
        if "nn_baseline" in options:
            value = options["nn_baseline"](options["nn_baseline_input"])
        elif "baseline_value" in options:
            value = options["baseline_value"]
        else:
            continue
        shape, wanted = tuple(torch.as_tensor(value).shape), tuple(site["fn"].batch_shape)
        if len(shape) < len(wanted):
            raise PairError(
                f"site {name!r}'s baseline has shape {shape}, but with "
                f"num_particles={num_particles} drawn vectorized its cost has the dims {wanted} "
                "at least (a leading particle dim); train with num_particles=1, or compute the "
                "baseline from an input that carries the particle dim"
            )


def check_autoguide(guide: Callable, layout: PairTraces, batch_size: int, rows: int) -> None:
    """An autoguide's local sites have one parameter per row of the plate it first saw: it
    cannot train on minibatches of a larger data set."""
    local = [n for n, s in layout.guide.nodes.items() if is_guide_sample(s) and layout.is_local(s)]
    if isinstance(guide, AutoGuide) and local and batch_size < rows:
        raise PairError(
            f"the autoguide {type(guide).__name__} has local site(s) {local} in the data plate "
            f"{layout.data_plate!r}, whose parameters are one per row of the whole data; train "
            f"it on the whole data (batch_size={rows}) or write an amortized guide"
        )


def check_warmup(sites: pd.DataFrame, kl_warmup: int) -> None:
    """Refuse KL warm-up where the model sums out a site: its β-scaled factors and their
    unscaled observations would need different scales, and TraceEnum_ELBO takes one."""
    summed = sites.loc[sites["enumerated"] == "model", "site"].tolist()
    if kl_warmup and summed:
        raise PplVaeError(
            f"kl_warmup scales the latent sites by beta, but the model sums out {summed} with "
            "the observations that depend on them, and TraceEnum_ELBO needs one scale for all "
            "of those; drop kl_warmup"
        )
