r"""Data sets drawn from a pair's own model, and latent draws laid out one row per datapoint.

Simulation-based calibration (:mod:`ppl_vae.diagnostics.sbc`) needs pairs :math:`(\tilde z,
\tilde x) \sim p(z)\,p(x|z)` from the trained model: the model is run with its observed sites
*sampled* instead of conditioned (``pyro.poutine.uncondition``), on a template minibatch that
supplies what the model reads from its arguments besides the observations (the number of rows,
covariates such as ``c`` of ``model(c, x)``, constant ``model_kwargs``). Each observed site's
draw then replaces the per-row argument that the site observes, so the guide sees the simulated
data exactly as it sees real data.

An observed site is matched to its argument by identity (``obs=x`` passes the argument itself)
or, failing that, by equal values; a site that observes a transformation of an argument
(``obs=x.view(...)``) cannot be matched and is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine

from ..pair.dataset import Batch
from ..pair.traces import PAIR_FAILURES, PairTraces, is_factor, is_latent, is_observed
from ..utils.errors import PairError, first_line


@dataclass(frozen=True)
class Simulated:
    """One simulated minibatch: the pair's arguments with the observations replaced by draws
    of the model, and the latent values they were drawn from (``{site: value}``, as the model
    trace holds them)."""

    batch: Batch
    latents: dict[str, torch.Tensor]
    event_dims: dict[str, int]


def observed_arguments(layout: PairTraces, batch: Batch) -> dict[str, tuple[str, int | str]]:
    """Each observed site of the model trace and the per-row argument it observes: ``("arg",
    position)`` or ``("kwarg", name)``; refuses sites that observe anything else."""
    slots = [("arg", i) for i in range(len(batch.args))] + [("kwarg", k) for k in batch.per_row]
    tensors = batch.tensors
    factors = [n for n, s in layout.model.nodes.items() if is_factor(s)]
    if factors:
        raise PairError(
            f"the model has pyro.factor term(s) {factors}: drawing from it forward ignores "
            "them, so the data it simulates are not from the model being fitted; calibration "
            "needs a model that is a generative process (write the factor as a distribution)"
        )
    found = {}
    for name, site in layout.model.nodes.items():
        if not is_observed(site):
            continue
        value = site["value"]
        match = [s for s, t in zip(slots, tensors, strict=True) if value is t]
        if not match:
            match = [s for s, t in zip(slots, tensors, strict=True)
                     if t.shape == value.shape and torch.equal(t, value)]
        if not match:
            raise PairError(
                f"the model's observed site {name!r} does not observe one of the per-row "
                "arguments unchanged, so data cannot be simulated from the model in its place; "
                f"write pyro.sample({name!r}, ..., obs=x) with x the argument itself (reshape "
                "inside the distribution, e.g. .to_event, not the observation)"
            )
        found[name] = match[0]
    return found


def simulate(model: Callable, template: Batch, layout: PairTraces) -> Simulated:
    """Draw latents and observations from ``model`` on the rows of ``template`` (its observed
    values are replaced; the rest is passed unchanged)."""
    slots = observed_arguments(layout, template)
    try:
        trace = poutine.trace(poutine.uncondition(model)).get_trace(
            *template.args, **template.kwargs
        )
    except PAIR_FAILURES as e:
        raise PairError(
            f"running the model with its observations sampled failed ({type(e).__name__}: "
            f"{first_line(e)})"
        ) from e
    args, kwargs = list(template.args), dict(template.kwargs)
    for name, (kind, key) in slots.items():
        original = args[key] if kind == "arg" else kwargs[key]
        value = trace.nodes[name]["value"].detach()
        if value.shape != original.shape:
            raise PairError(
                f"a draw of the observed site {name!r} has shape {tuple(value.shape)}, the data "
                f"it observes {tuple(original.shape)}; give the likelihood the data's shape "
                "(batch shape over the rows, .to_event for the rest)"
            )
        value = value.to(original.dtype)
        if kind == "arg":
            args[key] = value
        else:
            kwargs[key] = value
    latents = {
        name: site["value"].detach()
        for name, site in trace.nodes.items()
        if is_latent(site) and not site["infer"].get("was_observed", False)
    }
    events = {name: trace.nodes[name]["fn"].event_dim for name in latents}
    return Simulated(Batch(tuple(args), kwargs, template.rows, template.per_row), latents, events)


def rows_first(value: torch.Tensor, event_dim: int, layout: PairTraces, particles: bool
               ) -> torch.Tensor:
    """A local site's value with the data plate's dim first, ``(rows, ...)``, or second after
    the particle plate's, ``(particles, rows, ...)``; the rest are the other plates' dims and
    the event dims (a plate the site is not in has size 1)."""
    plates = layout.max_plate_nesting + int(particles)
    batch_dims = value.dim() - event_dim
    value = value.reshape((1,) * (plates - batch_dims) + tuple(value.shape))
    return value.movedim(plates + layout.data_dim, int(particles))


def coordinate_names(site: str, shape: tuple) -> list[str]:
    """Names of the coordinates of one row of ``site`` whose values have ``shape`` (dims of
    size 1 dropped), row-major: ``site`` for a scalar, else ``site[i]``, ``site[i,j]``, ..."""
    shape = tuple(s for s in shape if s != 1)
    if not shape:
        return [site]
    return [f"{site}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]
