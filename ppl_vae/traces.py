"""Running a pair once and reading its traces: latent and observed sites, plate layout,
per-datapoint reductions, and vectorized particles.

Everything that needs to look inside a model/guide pair goes through here, so that errors a
user's pair can cause are turned into :class:`~ppl_vae.errors.PairError` in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from .errors import PairError

PARTICLE_PLATE = "ppl_vae_particles"


def is_latent(site: dict) -> bool:
    """A model sample site that is not observed, a plate's subsample site or auxiliary."""
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def is_observed(site: dict) -> bool:
    """An observed sample site that contributes to log p(x|z) (not a ``pyro.deterministic``)."""
    return (
        site["type"] == "sample"
        and site["is_observed"]
        and not site["infer"].get("_deterministic", False)
    )


def in_data_plate(site: dict, data_dim: int) -> bool:
    """Whether ``site`` lies inside the vectorized plate over the minibatch (at ``data_dim``)."""
    return any(f.vectorized and f.dim == data_dim for f in site["cond_indep_stack"])


def latent_names(trace: Trace) -> list[str]:
    return [name for name, site in trace.nodes.items() if is_latent(site)]


@dataclass(frozen=True)
class PairTraces:
    """One joint execution: guide trace, model trace replayed against it, and plate layout."""

    model: Trace
    guide: Trace
    max_plate_nesting: int
    data_dim: int  # the (negative) dim of the plate over the minibatch


def run_pair(model: Callable, guide: Callable, x: torch.Tensor) -> PairTraces:
    """Trace ``guide(x)`` then ``model(x)`` replayed on the guide's latents, and check them.

    Raises :class:`PairError` when running the pair fails (e.g. wrong data width), when the
    guide misses a latent site of the model or samples one the model lacks (Pyro only warns),
    or when no plate runs over the minibatch's first dimension.
    """
    try:
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        if isinstance(e, PairError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PairError(
            f"running the model and guide on a minibatch of shape {tuple(x.shape)} failed "
            f"({type(e).__name__}: {first}); check that the data's width and values are what "
            "the pair was built for"
        ) from e
    check_sites(model_trace, guide_trace)
    return PairTraces(
        model_trace,
        guide_trace,
        max_plate_nesting(model_trace, guide_trace),
        data_plate_dim(model_trace, x.shape[0]),
    )


def check_sites(model_trace: Trace, guide_trace: Trace) -> None:
    """Refuse pairs whose guide and model disagree on the latent sites."""
    model_latents = set(latent_names(model_trace))
    guide_latents = set(latent_names(guide_trace))
    missing = sorted(model_latents - guide_latents)
    model_samples = {n for n, s in model_trace.nodes.items() if s["type"] == "sample"}
    extra = sorted(guide_latents - model_samples)
    if missing:
        raise PairError(
            f"the guide does not sample latent site(s) {missing} that the model has; "
            "add pyro.sample(name, ...) for each to the guide"
        )
    if extra:
        raise PairError(
            f"the guide samples site(s) {extra} that the model lacks; remove them, rename "
            "them to the model's sites, or mark them infer={'is_auxiliary': True}"
        )
    if not any(is_observed(s) for s in model_trace.nodes.values()):
        raise PairError("the model observes nothing: pass obs=x to the likelihood's pyro.sample")


def max_plate_nesting(*traces: Trace) -> int:
    dims = [
        -frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def data_plate_dim(model_trace: Trace, batch_size: int) -> int:
    """The dim of the vectorized plate over the minibatch, found on the observed sites."""
    frames = {
        frame
        for site in model_trace.nodes.values()
        if is_observed(site)
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.size == batch_size and frame.name != PARTICLE_PLATE
    }
    if not frames:
        raise PairError(
            f"no plate over the minibatch's {batch_size} rows encloses the observed site(s): "
            "wrap the likelihood in `with pyro.plate('data', x.shape[0]):`"
        )
    named = [f for f in frames if f.name == "data"]
    return (named or sorted(frames, key=lambda f: f.dim))[0].dim


def with_particles(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    """``fn`` under a vectorized particle plate at dim ``-(max_plate_nesting + 1)``."""

    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
            return fn(*args, **kwargs)

    return wrapped


def per_datapoint(value, layout: PairTraces, num_rows: int) -> torch.Tensor:
    """Reduce a log-density-like tensor to shape ``(particles, rows)``.

    ``value``'s batch dims are right-aligned to the plate dims, with the particle plate at
    ``-(max_plate_nesting + 1)``. Dims of other plates are summed. A term outside the data
    plate (a global latent) is shared out evenly: each row gets 1/N of it, so that the rows
    sum to the joint term.
    """
    ndim = layout.max_plate_nesting + 1
    value = torch.as_tensor(value)
    if value.dim() > ndim:
        raise PairError(
            f"a site's log-density has batch shape {tuple(value.shape)}, with more dims than "
            "the model's plates; declare event dims with .to_event(...)"
        )
    value = value.reshape((1,) * (ndim - value.dim()) + tuple(value.shape))
    data_axis = ndim + layout.data_dim
    others = [a for a in range(1, ndim) if a != data_axis]
    if others:
        value = value.sum(dim=others, keepdim=True)
    value = value.reshape(value.shape[0], value.shape[data_axis])
    if value.shape[1] == 1 and num_rows != 1:
        value = value / num_rows
    return value.expand(value.shape[0], num_rows)
