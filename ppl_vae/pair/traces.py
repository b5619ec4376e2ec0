"""Running a pair once and reading its traces: latent and observed sites, plate layout,
per-datapoint reductions, and vectorized particles.

Everything that needs to look inside a model/guide pair goes through here, so that errors a
user's pair can cause are turned into :class:`~ppl_vae.utils.errors.PairError` in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions import Unit
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from ..utils.errors import PairError, first_line, raised_at
from .dataset import Batch

PARTICLE_PLATE = "ppl_vae_particles"
# what a user's model or guide raises when it does not fit the data or the particle plate
PAIR_FAILURES = (RuntimeError, ValueError, TypeError, IndexError, AssertionError, KeyError)


def is_latent(site: dict) -> bool:
    """A model sample site that is not observed, a plate's subsample site or auxiliary."""
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def is_deterministic(site: dict) -> bool:
    """A ``pyro.deterministic`` site: a recorded value whose log-density is masked to 0."""
    return site["type"] == "sample" and bool(site["infer"].get("_deterministic", False))


def is_factor(site: dict) -> bool:
    """A ``pyro.factor`` site: an observed ``Unit`` whose log-density is the factor itself."""
    return site["type"] == "sample" and site["is_observed"] and isinstance(site["fn"], Unit)


def is_likelihood(site: dict) -> bool:
    """A model sample site that scores without being a latent: an observation or a factor.

    Pyro's ``Trace_ELBO`` sums the log-density of every sample site; in the model these are
    the latents' priors and these terms (a ``pyro.deterministic`` site's is masked to 0)."""
    return site["type"] == "sample" and site["is_observed"] and not is_deterministic(site)


def is_observed(site: dict) -> bool:
    """An observed data site (not a ``pyro.deterministic`` nor a ``pyro.factor``)."""
    return is_likelihood(site) and not is_factor(site)


def in_data_plate(site: dict, plate: str) -> bool:
    """Whether ``site`` lies inside the vectorized plate named ``plate`` (the data plate).

    The name, not the dim, decides: a global site may sit in another plate at the same dim.
    """
    return any(f.vectorized and f.name == plate for f in site["cond_indep_stack"])


def latent_names(trace: Trace) -> list[str]:
    return [name for name, site in trace.nodes.items() if is_latent(site)]


@dataclass(frozen=True)
class PairTraces:
    """One joint execution: guide trace, model trace replayed against it, and plate layout."""

    model: Trace
    guide: Trace
    max_plate_nesting: int
    data_dim: int  # the (negative) dim of the plate over the minibatch
    data_plate: str = "data"  # that plate's name

    def is_local(self, site: dict) -> bool:
        """Whether ``site`` lies in the data plate (one value per row): a local site."""
        return in_data_plate(site, self.data_plate)

    def global_latents(self) -> list[str]:
        """The model's latent sites outside the data plate, as results name them; where the
        model has none but q has global auxiliary sites (which couple the rows), those."""
        nodes = self.model.nodes.items()
        return [n for n, s in nodes if is_latent(s) and not self.is_local(s)] or self.global_sites()

    def global_sites(self) -> list[str]:
        """Guide sample sites (auxiliary ones too) outside the data plate: q's global part."""
        nodes = self.guide.nodes.items()
        return [n for n, s in nodes if is_guide_sample(s) and not self.is_local(s)]


def is_guide_sample(site: dict) -> bool:
    """A guide sample site that q draws: latent or auxiliary, not a plate's subsample."""
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def is_guide_term(site: dict) -> bool:
    """A guide site whose log-density is part of log q, as ``Trace_ELBO`` subtracts it: every
    sample site but a plate's subsample, so observed sites and ``pyro.factor`` terms (e.g. a
    flow's log-Jacobian beside a ``Delta``) too; a ``pyro.deterministic`` scores 0."""
    return site["type"] == "sample" and not site_is_subsample(site) and not is_deterministic(site)


def is_guide_factor(site: dict) -> bool:
    """A guide site that scores but is not drawn: a ``pyro.factor`` or an observed site."""
    return is_guide_term(site) and site["is_observed"]


def as_batch(batch: Batch | torch.Tensor) -> Batch:
    """A bare tensor ``x`` as the batch of ``model(x)``."""
    return batch if isinstance(batch, Batch) else Batch((batch,), {}, int(batch.shape[0]))


def trace_pair(model: Callable, guide: Callable, batch: Batch, replay: Trace | None = None):
    """(model trace, guide trace) of one run; ``replay`` fixes some guide sites' values."""
    if replay is not None:
        guide = poutine.replay(guide, trace=replay)
    guide_trace = poutine.trace(guide).get_trace(*batch.args, **batch.kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *batch.args, **batch.kwargs
    )
    return model_trace, guide_trace


def run_pair(model: Callable, guide: Callable, batch: Batch | torch.Tensor) -> PairTraces:
    """Trace ``guide`` then ``model`` replayed on the guide's latents on one batch, and check them.

    Raises :class:`PairError` when running the pair fails (e.g. wrong data width), when the
    guide misses a latent site of the model or samples one the model lacks (Pyro only warns),
    when no plate runs over the minibatch's first dimension, when the model subsamples the data
    plate itself, or when the pair's parameters have another dtype than the data.
    """
    batch = as_batch(batch)
    try:
        model_trace, guide_trace = trace_pair(model, guide, batch)
    except PAIR_FAILURES as raised:
        if isinstance(raised, PairError):
            raise
        e = pair_exception(raised)
        check_dtypes(batch, [v for _, v in pyro.get_param_store().items()])
        if is_invalid_parameter(e):
            raise PairError(
                f"a distribution of the pair got an invalid parameter ({first_line(e)}); a NaN "
                "there comes from a NaN parameter or network output: load good parameters, or "
                "train again with a lower lr or clip_norm"
            ) from e
        raise PairError(
            f"running the model and guide on a minibatch of shape {batch.describe()} failed at "
            f"{raised_at(e)} ({type(e).__name__}: {first_line(e)}); "
            f"{_width_hint(batch, e)}{_dtype_hint(batch)}"
        ) from e
    check_sites(model_trace, guide_trace)
    check_dtypes(batch, [s["value"] for t in (model_trace, guide_trace)
                         for s in t.nodes.values() if s["type"] == "param"])
    check_subsampling(model_trace)
    plate = data_plate(model_trace, batch.rows)
    return PairTraces(
        model_trace,
        guide_trace,
        max_plate_nesting(model_trace, guide_trace),
        plate.dim,
        plate.name,
    )


def pair_exception(error: BaseException) -> BaseException:
    """The exception a pair raised, without the copies Pyro's ``poutine.trace`` raises from it
    (of its type, the message followed by the trace's shapes)."""
    cause = error.__cause__
    while type(cause) is type(error) and str(error).startswith(f"{cause}\n"):
        error, cause = cause, cause.__cause__
    return error


def is_invalid_parameter(error: BaseException) -> bool:
    """Whether ``error`` is torch's validation refusing a distribution's parameter (its
    ``ValueError`` reads "Expected parameter ... to satisfy the constraint ...")."""
    return isinstance(error, ValueError) and "Expected parameter" in str(error)


# torch's message for a matrix product (a Linear layer) of inputs of the wrong width
_MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


def _width_hint(batch: Batch, error: BaseException) -> str:
    """What a failed run says of the data's width: where torch's matrix-product message shows
    a layer given the data's columns but built for another width, those two widths and the
    fix; otherwise to check the width and values."""
    found = _MATMUL.search(str(error)) if isinstance(error, RuntimeError) else None
    widths = {int(t.shape[-1]) for t in batch.tensors if t.dim() >= 2}
    if found is None or int(found[2]) not in widths:
        return "check that the data's width and values are what the pair was built for"
    given, built = int(found[2]), int(found[3])
    return (
        f"torch reports a matrix product of inputs of width {given}, the data's number of "
        f"columns, with weights for width {built}: the pair was built for {built} columns; "
        f"build it for {given} (its x_dim option, e.g. make_pair(x_dim={given})) or give it "
        f"the data of {built} columns it was built for"
    )


def _dtype_hint(batch: Batch) -> str:
    """Where per-row arrays are not floating: that they are passed as given, and the fix."""
    kinds = sorted({str(t.dtype) for t in batch.tensors if not t.is_floating_point()})
    if not kinds:
        return ""
    return (
        f"; per-row arrays are passed to the pair as given, and some are {', '.join(kinds)}: "
        "if the pair computes with them as real numbers (a likelihood's value), convert them "
        "first (x.float()); integer row numbers and bool masks are fine as they are"
    )


def check_dtypes(batch: Batch, params: list[torch.Tensor]) -> None:
    """Refuse floating parameters of another dtype than the (floating) per-row data."""
    data = {t.dtype for t in batch.tensors if t.is_floating_point()}
    have = {p.dtype for p in params if torch.is_tensor(p) and p.is_floating_point()}
    if len(data) == 1 and have - data:
        (dtype,) = data
        raise PairError(
            f"the data is {dtype} but the pair has {sorted(map(str, have - data))} parameters; "
            f"make them agree: convert the data (x.to({sorted(map(str, have))[0]}); a data file: "
            "save it in that dtype) or "
            f"build the pair's parameters and networks in {dtype} (module.to({dtype}))"
        )


def check_subsampling(model_trace: Trace) -> None:
    """Refuse a model that subsamples a plate itself (``subsample_size=``/``subsample=``)."""
    for name, site in model_trace.nodes.items():
        if not site_is_subsample(site):
            continue
        size, subsample = site["fn"].size, int(site["value"].numel())
        if subsample < size:
            raise PairError(
                f"the model subsamples its plate {name!r} ({subsample} of {size}); "
                "ppl_vae draws the minibatches itself and scales them by N/B, so write "
                f"pyro.plate({name!r}, x.shape[0]) without subsample_size and pass "
                f"batch_size={subsample} to fit"
            )


def check_sites(model_trace: Trace, guide_trace: Trace) -> None:
    """Refuse pairs whose guide and model disagree on the latent sites."""
    model_latents = set(latent_names(model_trace))
    guide_latents = set(latent_names(guide_trace))
    summed = {n for n in model_latents if model_trace.nodes[n]["infer"].get("enumerate")}
    missing = sorted(model_latents - guide_latents - summed)
    model_samples = {n for n, s in model_trace.nodes.items() if s["type"] == "sample"}
    extra = sorted(guide_latents - model_samples)
    if missing:
        raise PairError(
            f"the guide does not sample latent site(s) {missing} that the model has; "
            "add pyro.sample(name, ...) for each to the guide, or, for a discrete site, sum it "
            "out of the model: infer={'enumerate': 'parallel'} and estimator='enum'"
        )
    if extra:
        raise PairError(
            f"the guide samples site(s) {extra} that the model lacks; remove them, rename "
            "them to the model's sites, or mark them infer={'is_auxiliary': True}"
        )
    if not any(is_likelihood(s) for s in model_trace.nodes.values()):
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


def data_plate(model_trace: Trace, batch_size: int):
    """The vectorized plate over the minibatch (a ``CondIndepStackFrame``), found on the
    observed sites: the one named ``data`` if several have the batch's size."""
    frames = {
        frame
        for site in model_trace.nodes.values()
        if is_likelihood(site)
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.name != PARTICLE_PLATE and _spans(frame, site, batch_size)
    }
    if not frames:
        raise PairError(
            f"no plate over the minibatch's {batch_size} rows encloses the observed site(s): "
            "wrap the likelihood in `with pyro.plate('data', x.shape[0]):`"
        )
    named = [f for f in frames if f.name == "data"]
    return (named or sorted(frames, key=lambda f: f.dim))[0]


def _spans(frame, site: dict, rows: int) -> bool:
    """Whether plate ``frame`` runs over ``rows`` at ``site``: its size, or for a plate without
    one (``pyro.plate("data")``, size -1, sized by broadcasting) the site's batch shape at its
    dim."""
    if frame.size is not None and frame.size >= 0:
        return frame.size == rows
    shape = site["fn"].batch_shape
    return len(shape) >= -frame.dim and shape[frame.dim] == rows


def with_particles(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    """``fn`` under a vectorized particle plate at dim ``-(max_plate_nesting + 1)``."""

    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
            return fn(*args, **kwargs)

    return wrapped


class BroadcastError(PairError):
    """A site's log-density lacks the (particle, row) layout of a vectorized particle plate,
    e.g. because the model's networks do not broadcast over a leading particle dim."""


def _aligned(value, layout: PairTraces, num_particles: int, enum_dims: int = 0) -> torch.Tensor:
    """``value`` with its batch dims right-aligned to the plates, particle axis first (after
    ``enum_dims`` leading dims of enumerated sites)."""
    ndim = layout.max_plate_nesting + 1 + enum_dims
    value = torch.as_tensor(value)
    if value.dim() > ndim:
        raise PairError(
            f"a site's log-density has batch shape {tuple(value.shape)}, with more dims than "
            "the model's plates; declare event dims with .to_event(...)"
        )
    value = value.reshape((1,) * (ndim - value.dim()) + tuple(value.shape))
    if value.shape[enum_dims] not in (1, num_particles):
        raise BroadcastError(
            f"a log-density of shape {tuple(value.shape)} does not have {num_particles} "
            "particles on its particle axis"
        )
    return value


def local_terms(
    value, layout: PairTraces, num_particles: int, rows: int, enum_dims: int = 0
) -> torch.Tensor:
    """A log-density-like tensor of a site in the data plate as ``(particles, rows)``.

    ``value``'s batch dims are right-aligned to the plate dims, the particle plate at
    ``-(max_plate_nesting + 1)``; the dims of other plates are summed. With ``enum_dims`` > 0
    the dims left of the particle plate (those of enumerated sites) are kept:
    ``(*enum, particles, rows)``, each enumerated dim of size 1 or its support's.
    """
    value = _aligned(value, layout, num_particles, enum_dims)
    data_axis = value.dim() + layout.data_dim
    if value.shape[data_axis] != rows:
        raise BroadcastError(
            f"a log-density of shape {tuple(value.shape)} does not have {rows} rows at the "
            f"data plate's dim {layout.data_dim}"
        )
    others = [a for a in range(enum_dims + 1, value.dim()) if a != data_axis]
    if others:
        value = value.sum(dim=others, keepdim=True)
    lead = tuple(value.shape[:enum_dims])
    return value.reshape(lead + (value.shape[enum_dims], rows)).expand(
        lead + (num_particles, rows)
    )


def global_terms(value, layout: PairTraces, num_particles: int) -> torch.Tensor:
    """A log-density-like tensor of a site outside the data plate, summed to ``(particles,)``."""
    value = _aligned(value, layout, num_particles)
    return value.reshape(value.shape[0], -1).sum(1).expand(num_particles)
